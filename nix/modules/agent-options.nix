# The options of services.yeet-agent, shared by the NixOS and the nix-darwin module.
# Private keys are strings (paths on the host, deployed as secrets): a Nix path would be
# copied into the world-readable store. Tuning options default to null, which leaves the
# key out of agent.toml so that the agent's own default applies.
{ lib, defaultPackage, settingsType }:
let
  inherit (lib) mkOption mkEnableOption types;
  tuning = type: default: description: mkOption {
    type = types.nullOr type;
    default = null;
    description = "${description} Null: the agent's default (${default}).";
  };
in
{
  enable = mkEnableOption "the yeet agent";
  package = mkOption {
    type = types.package;
    default = defaultPackage;
    description = "The yeet package.";
  };
  server = mkOption {
    type = types.str;
    example = "https://yeet.example.org:8470";
    description = "URL of the yeet server.";
  };
  key = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "/run/secrets/yeet-agent-key";
    description = ''
      Path, on the host, of the agent's private key (OpenSSH ed25519). A string, never a
      Nix path: it must not be copied into the Nix store. Null: the SSH host key, else a
      key generated under /var/lib/yeet.
    '';
  };
  caCert = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "/etc/ssl/yeet-ca.pem";
    description = "Path of an extra CA certificate (PEM) for the server's TLS certificate.";
  };
  hostname = mkOption {
    type = types.nullOr types.str;
    default = null;
    description = "Host name suggested to the admin at registration. Null: the host's name.";
  };
  trustedKeys = mkOption {
    type = types.listOf types.str;
    default = [ ];
    example = [ "fleet-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=" ];
    description = ''
      Binary-cache keys (`name:base64`) whose signatures this host accepts on a new system;
      nix.conf's trusted-public-keys count too.
    '';
  };
  pollInterval = tuning types.ints.positive "30"
    "Seconds between polls while waiting for approval; the base of the retry backoff.";
  longPoll = tuning types.ints.unsigned "55"
    "Seconds a check-in may be held open by the server (0: no long-poll).";
  confirmTimeout = tuning types.ints.positive "120"
    "Seconds a new system has to reach the server and pass the health check before it is rolled back.";
  healthCheck = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "systemctl is-system-running --wait";
    description = ''
      Shell command that must succeed on a new system before it is confirmed. It runs as
      root through /bin/sh -c, with the agent's environment: its PATH holds Nix, systemd,
      util-linux, bash, coreutils, findutils, grep and sed (on nix-darwin: Nix and the
      system's own tools).
    '';
  };
  suggestTags = mkOption {
    type = types.listOf types.str;
    default = [ ];
    example = [ "kiosk" "eu" ];
    description = ''
      Tags this host suggests for itself (a-z, 0-9, `-`, `_`, `:`; at most 32). Only
      suggestions: operators see them in `yeet host show` and accept them with
      `yeet host tag HOST --accept-suggested`, or the server's `accept_suggested_tags`
      gives them at approval. A host never chooses its own tags, because tags decide who
      may act on it.
    '';
  };
  activationMode = mkOption {
    type = types.enum [ "switch" "boot" ];
    default = "switch";
    description = "Activate new systems now (switch, then confirm or roll back) or at the next boot (boot).";
  };
  reboot = mkOption {
    type = types.nullOr (types.enum [ "in-window" "never" ]);
    default = null;
    example = "in-window";
    description = ''
      Whether the host reboots by itself when an activation needs a reboot (activationMode
      "boot", or a new kernel or initrd): "in-window" reboots inside the host's maintenance
      window (at once where no window covers it); "never" leaves it to people. The agent
      checks what came up after the boot and reports it like any activation. Null follows
      the host's policy on the server (`yeet host policy HOST --reboot`); set, it holds
      over that policy.
    '';
  };
  allowedCacheSchemes = tuning (types.listOf types.str) "http https file s3 ssh"
    "URL schemes of the binary caches the server may name.";
  socketGroup = mkOption {
    type = types.str;
    default = "yeet";
    description = ''
      Group that may use the agent's local socket (/run/yeet/agent.varlink): see the
      status (with the verification code while pending) and the log, and trigger a
      check-in. Add people with `users.users.<name>.extraGroups = [ "yeet" ]`.
    '';
  };
  adminGroup = mkOption {
    type = types.str;
    default = "yeet-admin";
    description = ''
      Group whose members may also change the system through the socket: detach, switch
      to a local system, force a switch, attach. They need the socket group too, to open
      the socket. Root always may; with polkit enabled, rules for the actions
      org.yeet.agent.{detach,switch,force-switch,attach} may allow others.
    '';
  };
  osquery = {
    enable = mkEnableOption ''
      osqueryd (nixpkgs' services.osquery), enrolled with the yeet server's osquery remote
      API. The enroll secret is the yeet secret osquery-enroll: add it with
      `yeet secret add osquery-enroll --from-file F --host HOST`. The server URL must be https'';
    distributedInterval = mkOption {
      type = types.ints.positive;
      default = 10;
      description = "Seconds between osqueryd's reads of distributed queries (`yeet query`).";
    };
  };
  maxCheckinInterval = tuning types.ints.positive "300"
    "The longest the agent waits between check-ins, whatever the server asks.";
  settings = mkOption {
    type = settingsType;
    default = { };
    description = ''
      Further agent.toml keys, for settings newer than this module. The file is checked
      with `yeet-agent check-config` at build time: an unknown key fails the build.
    '';
  };
}
