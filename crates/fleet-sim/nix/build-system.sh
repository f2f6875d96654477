# Builder of system.nix (runs under /bin/sh with the derivation's attributes as variables).
set -e
mkdir -p "$out/bin" "$out/etc/yeet"
ln -s "$kernelPkg/bzImage" "$out/kernel"
ln -s "$kernelPkg/initrd" "$out/initrd"
echo "$salt" > "$out/salt"
agent_server="$server"
health=""
[ "$variant" = dead-server ] && agent_server="http://127.0.0.1:9"
[ "$variant" = unhealthy ] && health='health_check = "echo the web service does not answer >&2; exit 1"'
cat > "$out/etc/yeet/agent.toml" <<CONF
server = "$agent_server"
key = "/etc/yeet/host_key"
trusted_keys = ["$trustedKey"]
poll_interval_secs = 1
long_poll_secs = 20
confirm_timeout_secs = $confirmTimeout
$health
$extraConfig
CONF
cat > "$out/bin/switch-to-configuration" <<SCRIPT
#!/bin/sh
echo "switch-to-configuration \$1: $out ($variant)"
case "\$1" in
  switch|test)
    cp "$out/etc/yeet/agent.toml" /etc/yeet/agent.toml
    ln -sfn "$out" /run/current-system
    if [ "$variant" = fail ]; then
      echo "error: the unit demo-web.service failed to start (exit 4)" >&2
      exit 4
    fi
    # Restart the agent, as systemd restarts yeet-agent.service on a switch.
    [ -f /run/yeet/agent.pid ] && kill "\$(cat /run/yeet/agent.pid)" 2>/dev/null
    ;;
esac
exit 0
SCRIPT
chmod +x "$out/bin/switch-to-configuration"
