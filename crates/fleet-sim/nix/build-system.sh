# Builder of system.nix (runs under /bin/sh with the derivation's attributes as variables).
set -e
mkdir -p "$out/bin" "$out/etc/yeet" "$out/etc/systemd"
ln -s "$kernelPkg/bzImage" "$out/kernel"
ln -s "$kernelPkg/initrd" "$out/initrd"
echo "$salt" > "$out/salt"
ln -s "$agentConfig" "$out/etc/yeet/agent.toml"
ln -s "$secretsManifest" "$out/etc/yeet/secrets.json"
ln -s "$unit" "$out/etc/systemd/yeet-agent.service"
cat > "$out/bin/switch-to-configuration" <<SCRIPT
#!/bin/sh
# A real system's switch script brings its own tools rather than trusting the caller's PATH.
PATH=/bin:/usr/bin
echo "switch-to-configuration \$1: $out ($variant)"
case "\$1" in
  switch|test)
    cp "$agentConfig" /etc/yeet/agent.toml
    ln -sfn "$out" /run/current-system
    if [ -d /run/systemd/system ]; then
      # As NixOS: install the new unit, reload, and restart the agent only when its unit
      # file changed (X-StopIfChanged=false: a restart, not a stop before activation).
      installed=/etc/systemd/system/yeet-agent.service
      changed=no
      cmp -s "\$installed" "$unit" || changed=yes
      cp "$unit" "\$installed.new" && mv "\$installed.new" "\$installed"
      systemctl daemon-reload
    fi
    if [ "$variant" = slow ]; then
      echo "starting a slow service..."
      sleep 8
    fi
    if [ "$variant" = fail ]; then
      echo "error: the web service demo-web failed to start (exit 4)" >&2
      exit 4
    fi
    if [ "$variant" = failed-unit ] && [ -d /run/systemd/system ]; then
      # A service that fails after the switch succeeded: NixOS reports such units and
      # goes on; the unit stays failed until reset.
      systemd-run --unit=demo-broken --quiet /bin/false || true
    fi
    if [ -d /run/systemd/system ]; then
      [ "\$changed" = yes ] && systemctl restart yeet-agent.service
    else
      # Restart the agent, as systemd restarts yeet-agent.service on a switch.
      [ -f /run/yeet/agent.pid ] && kill "\$(cat /run/yeet/agent.pid)" 2>/dev/null
    fi
    ;;
esac
exit 0
SCRIPT
chmod +x "$out/bin/switch-to-configuration"

if [ "$platform" = darwin ]; then
  # A nix-darwin-shaped system: no switch script, but `activate` (run as root after the
  # profile is set), `activate-user` (older releases), darwin-version and systemConfig.
  rm -r "$out/bin" "$out/kernel" "$out/initrd"
  echo "{\"darwinLabel\": \"$name\"}" > "$out/darwin-version"
  echo "$out" > "$out/systemConfig"
  cat > "$out/activate-user" <<SCRIPT
#!/bin/sh
echo "activate-user: $out"
SCRIPT
  cat > "$out/activate" <<SCRIPT
#!/bin/sh
PATH=/bin:/usr/bin
echo "activate: $out ($variant)"
cp "$agentConfig" /etc/yeet/agent.toml
ln -sfn "$out" /run/current-system
if [ "$variant" = fail ]; then
  echo "error: the web service demo-web failed to start (exit 4)" >&2
  exit 4
fi
# launchd reloads the agent's daemon when its plist changed; here: restart it.
[ -f /run/yeet/agent.pid ] && kill "\$(cat /run/yeet/agent.pid)" 2>/dev/null
exit 0
SCRIPT
  chmod +x "$out/activate" "$out/activate-user"
fi
