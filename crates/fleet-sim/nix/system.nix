# A test "NixOS system": a real derivation whose bin/switch-to-configuration does to the
# simulated host what NixOS's does: installs the system's agent configuration and its
# yeet-agent unit, points /run/current-system at itself, and restarts the agent. On a host
# that boots systemd it restarts yeet-agent.service only when the unit file changed, as
# NixOS does; on a namespace host it kills the agent (the harness's supervisor starts it
# again). With platform = "darwin" it is shaped like a nix-darwin system instead. Variants
# fail the switch, carry an agent config that cannot reach the server or
# cannot start, fail the health check, or bring another kernel.
{ name, server, trustedKey, variant ? "good", kernel ? "6.1", confirmTimeout ? 20, salt ? ""
, extraConfig ? "", system ? builtins.currentSystem
  # "darwin": a nix-darwin-shaped system (activate, activate-user, no switch script).
, platform ? "nixos"
  # The system's `yeet.secrets`, as a NixOS configuration sets them.
, secrets ? { }
  # Where the agent's package is on the host (its bin/yeet-agent is the unit's ExecStart).
, agentPackage ? "/opt/yeet-agent"
, agentServiceFile ? ../../../nix/modules/agent-service.nix
  # The modules' own manifest writer (a flake that copies this file brings its own copy).
, secretsManifestFile ? ../../../nix/modules/secrets-manifest.nix
}:
let
  drv = attrs: derivation ({ inherit system; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; } // attrs);
  kernelPkg = drv {
    name = "linux-${kernel}";
    args = [ "-c" "mkdir -p $out; echo ${kernel} > $out/bzImage; echo initrd-${kernel} > $out/initrd" ];
  };
  agentServer = if variant == "dead-server" then "http://127.0.0.1:9" else server;
  # An agent that exits at start-up (its key is not there) and is restarted over and over.
  agentKey = if variant == "missing-key" then "/etc/yeet/missing_key" else "/etc/yeet/host_key";
  healthCheck = if variant == "unhealthy"
    then ''health_check = "echo the web service does not answer >&2; exit 1"''
    else "";
  # Long-polls of 20 s, unless the extra config sets its own.
  longPoll = if builtins.length (builtins.split "long_poll_secs" extraConfig) > 1
    then "" else "long_poll_secs = 20";
  # The agent config is a file of its own in the store, as environment.etc makes it.
  agentConfig = builtins.toFile "agent.toml" ''
    server = "${agentServer}"
    key = "${agentKey}"
    trusted_keys = ["${trustedKey}"]
    poll_interval_secs = 1
    ${longPoll}
    confirm_timeout_secs = ${toString confirmTimeout}
    ${healthCheck}
    ${extraConfig}
  '';
  tools = import ./tools.nix { inherit drv; };
  service = import agentServiceFile {
    package = agentPackage;
    configFile = agentConfig;
    tools = { inherit (tools) nix systemd util-linux bash; };
  };
  # A derivation, not builtins.toFile: the unit refers to the tool packages.
  unit = drv {
    name = "yeet-agent.service";
    text = import ./unit.nix {
      inherit service;
      # What NixOS appends to every unit's path.
      defaultPath = with tools; [ coreutils findutils gnugrep gnused systemd ];
    };
    args = [ "-c" "printf '%s' \"$text\" > $out" ];
  };
  # Written by the modules' own code, as NixOS writes etc/yeet/secrets.json.
  secretsManifest = builtins.toFile "secrets.json"
    ((import secretsManifestFile).manifest secrets);
in drv {
  inherit name variant salt agentConfig unit platform secretsManifest;
  kernelPkg = kernelPkg;
  args = [ "-c" (builtins.readFile ./build-system.sh) ];
}
