# nix-darwin module: services.yeet-agent as a launchd daemon.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.yeet-agent;
  toml = pkgs.formats.toml { };
in
{
  options.services.yeet-agent = {
    enable = lib.mkEnableOption "the yeet agent";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.yeet;
      description = "The yeet package.";
    };
    server = lib.mkOption {
      type = lib.types.str;
      description = "URL of the yeet server.";
    };
    trustedKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Binary-cache keys this host trusts.";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = "Further settings for /etc/yeet/agent.toml.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."yeet/agent.toml".source =
      toml.generate "agent.toml" ({ server = cfg.server; trusted_keys = cfg.trustedKeys; } // cfg.settings);
    environment.systemPackages = [ cfg.package ];
    launchd.daemons.yeet-agent.serviceConfig = {
      ProgramArguments = [ "${cfg.package}/bin/yeet-agent" "run" ];
      KeepAlive = true;
      RunAtLoad = true;
      StandardErrorPath = "/var/log/yeet-agent.log";
    };
  };
}
