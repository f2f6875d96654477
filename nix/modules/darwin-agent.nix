# nix-darwin module: services.yeet-agent as a launchd daemon, with the same options as the
# NixOS module. The agent recognises a darwin system by its `activate` script and applies
# it the way darwin-rebuild does; launchd starts it with Nix on its PATH.
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
    environment.systemPackages = [ cfg.package ];
    launchd.daemons.yeet-agent.serviceConfig = {
      # The config file's store path is part of the plist: activate reloads a daemon whose
      # plist changed, so a config-only change restarts the agent too (NixOS: restartTriggers).
      ProgramArguments = [ "${cfg.package}/bin/yeet-agent" "run" "--config" "${configFile}" ];
      # launchd gives daemons a bare PATH: the agent runs nix-store and nix-env, the
      # activation runs the system's activate script, the health check runs /bin/sh.
      EnvironmentVariables.PATH = lib.concatStringsSep ":" [
        "${config.nix.package}/bin"
        "/run/current-system/sw/bin"
        "/usr/bin"
        "/bin"
        "/usr/sbin"
        "/sbin"
      ];
      KeepAlive = true;
      RunAtLoad = true;
      StandardErrorPath = "/var/log/yeet-agent.log";
    };
  };
}
