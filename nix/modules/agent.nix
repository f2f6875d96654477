# NixOS module: services.yeet-agent, the root daemon that keeps this host on the system its
# fleet wants. The activation runs in a transient systemd unit (systemd-run) outside this
# service's cgroup, so it outlives the agent's own restart during a switch. The service
# itself is agent-service.nix, which the test fleet's systemd hosts run too.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.yeet-agent;
  toml = pkgs.formats.toml { };
  # Checked by the agent's own parser at build time: a typo, a bad value or a private key
  # in the store fails nixos-rebuild with the agent's message, not the agent on the host.
  configFile = pkgs.runCommand "agent.toml" { } ''
    cp ${toml.generate "agent.toml" (import ./agent-settings.nix cfg)} $out
    ${cfg.package}/bin/yeet-agent check-config $out
  '';
  inStore = path: path != null && lib.hasPrefix builtins.storeDir (toString path);
in
{
  options.services.yeet-agent = import ./agent-options.nix {
    inherit lib;
    defaultPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.yeet;
    settingsType = toml.type;
  };

  config = lib.mkIf cfg.enable {
    assertions = [{
      assertion = !(inStore cfg.key);
      message = "services.yeet-agent.key is in the Nix store, which every user can read; give the path of a secret deployed outside the store (a string, not a Nix path).";
    }];
    environment.etc."yeet/agent.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];
    # Members of `yeet` may read the agent's status (and, later, use its local socket).
    users.groups.yeet = { };

    systemd.services.yeet-agent = import ./agent-service.nix {
      inherit (cfg) package;
      inherit configFile;
      tools = {
        nix = config.nix.package;
        systemd = config.systemd.package;
        inherit (pkgs) util-linux bash;
      };
    } // {
      wantedBy = [ "multi-user.target" ];
    };
  };
}
