# NixOS module: services.yeet-agent, the root daemon that keeps this host on the system its
# fleet wants. The activation runs in a transient systemd unit (systemd-run) outside this
# service's cgroup, so it outlives the agent's own restart during a switch. The service
# itself is agent-service.nix, which the test fleet's systemd hosts run too.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.yeet-agent;
  common = import ./agent-common.nix { inherit lib pkgs cfg; };
  inherit (common) configFile;
in
{
  options.yeet.secrets = import ./secrets-options.nix { inherit lib; };

  options.services.yeet-agent = import ./agent-options.nix {
    inherit lib;
    defaultPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.yeet;
    inherit (common) settingsType;
  };

  config = lib.mkIf cfg.enable {
    inherit (common) assertions;
    environment.etc."yeet/agent.toml".source = configFile;
    # What the agent fetches and writes before it switches to this system.
    environment.etc."yeet/secrets.json".text =
      (import ./secrets-manifest.nix).manifest config.yeet.secrets;
    # At boot, secrets kept for this host (encrypted to its key) are back before services
    # start; during a switch the agent has put them in place already, and this does nothing.
    system.activationScripts.yeet-secrets = {
      deps = [ "etc" "users" "groups" ];
      text = "${cfg.package}/bin/yeet-agent restore-secrets || true";
    };
    # The local socket's groups: members of socketGroup see the status and trigger
    # check-ins; members of adminGroup (and socketGroup) may also detach and switch.
    users.groups.${cfg.socketGroup} = { };
    users.groups.${cfg.adminGroup} = { };
    # The polkit actions the agent asks about (pkcheck) for callers outside adminGroup.
    # Nobody is allowed by default: polkit rules grant them.
    environment.systemPackages = [ cfg.package ]
      ++ lib.optional config.security.polkit.enable
        (pkgs.writeTextDir "share/polkit-1/actions/org.yeet.agent.policy"
          (import ./agent-polkit.nix));

    # osqueryd enrolled with this fleet's server; its secret comes through yeet.secrets.
    yeet.secrets = lib.mkIf cfg.osquery.enable { osquery-enroll = { }; };
    services.osquery = lib.mkIf cfg.osquery.enable {
      enable = true;
      flags = import ./agent-osquery.nix {
        serverUrl = cfg.server;
        secretPath = config.yeet.secrets.osquery-enroll.path;
        inherit (cfg) caCert;
        inherit (cfg.osquery) distributedInterval;
      };
    };

    systemd.services.yeet-agent = import ./agent-service.nix {
      inherit (cfg) package;
      inherit configFile;
      tools = {
        nix = config.nix.package;
        systemd = config.systemd.package;
        inherit (pkgs) util-linux bash;
      } // lib.optionalAttrs config.security.polkit.enable {
        polkit = config.security.polkit.package;
      };
    } // {
      wantedBy = [ "multi-user.target" ];
    };
  };
}
