# NixOS module: services.yeet-agent, the root daemon that keeps this host on the system its
# fleet wants. The activation runs in a transient systemd unit (systemd-run) outside this
# service's cgroup, so it outlives the agent's own restart during a switch.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.yeet-agent;
  toml = pkgs.formats.toml { };
  settings = {
    server = cfg.server;
    trusted_keys = cfg.trustedKeys;
    poll_interval_secs = cfg.pollInterval;
    confirm_timeout_secs = cfg.confirmTimeout;
    activation_mode = cfg.activationMode;
  } // lib.optionalAttrs (cfg.key != null) { key = cfg.key; }
    // lib.optionalAttrs (cfg.healthCheck != null) { health_check = cfg.healthCheck; }
    // cfg.settings;
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
      example = "https://yeet.example.org:8470";
      description = "URL of the yeet server.";
    };
    key = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "Signing key; default: the SSH host key, else one generated under /var/lib/yeet.";
    };
    trustedKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "fleet-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=" ];
      description = "Binary-cache keys this host trusts (nix.settings.trusted-public-keys count too).";
    };
    pollInterval = lib.mkOption {
      type = lib.types.ints.positive;
      default = 30;
      description = "Seconds between polls while waiting for approval; base of the retry backoff.";
    };
    confirmTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 120;
      description = "Seconds a new system has to reach the server and pass the health check before it is rolled back.";
    };
    healthCheck = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "systemctl is-system-running --wait";
      description = "Shell command that must succeed on a new system before it is confirmed.";
    };
    activationMode = lib.mkOption {
      type = lib.types.enum [ "switch" "boot" ];
      default = "switch";
      description = "Activate new systems now (switch) or at the next boot (boot).";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = "Further settings for /etc/yeet/agent.toml.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."yeet/agent.toml".source = toml.generate "agent.toml" settings;
    environment.systemPackages = [ cfg.package ];
    # Members of `yeet` may use the agent's local socket (status, detach, attach).
    users.groups.yeet = { };

    systemd.services.yeet-agent = {
      description = "yeet agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      path = [ config.nix.package config.systemd.package pkgs.util-linux ];
      # A switch restarts the agent; the restarted agent confirms the new system.
      stopIfChanged = false;
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/yeet-agent run";
        Restart = "always";
        RestartSec = 2;
        StateDirectory = "yeet";
        # The activation log and state are root's alone (the agent sets this too).
        StateDirectoryMode = "0700";
        RuntimeDirectory = "yeet";
        RuntimeDirectoryPreserve = true;
      };
    };
  };
}
