# NixOS module: services.yeet-server, the control plane (SQLite in its state directory by
# default, or PostgreSQL), with its embedded binary cache.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.yeet-server;
  toml = pkgs.formats.toml { };
  serverSettings = import ./server-settings.nix;
  # Checked by the server's own parser at build time: a typo or a bad value fails
  # nixos-rebuild with the server's message, not the server after the switch.
  configFile = pkgs.runCommand "server.toml" { } ''
    cp ${toml.generate "server.toml" (serverSettings.render cfg)} $out
    ${cfg.package}/bin/yeet-server check-config $out
  '';
  inStore = path: path != null && lib.hasPrefix builtins.storeDir (toString path);
  tuningOption = t:
    let
      at = builtins.elemAt t;
      type = if at 2 == "bool" then lib.types.bool else lib.types.ints.positive;
    in
    lib.nameValuePair (at 0) (lib.mkOption {
      type = lib.types.nullOr type;
      default = null;
      description = "${at 4} Sets `${at 1}`; null: the server's default (${at 3}).";
    });
in
{
  options.services.yeet-server = {
    enable = lib.mkEnableOption "the yeet server";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.yeet;
      description = "The yeet package.";
    };
    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address to listen on (loopback by default; expose it deliberately, ideally with TLS).";
    };
    port = lib.mkOption {
      type = lib.types.port;
      default = 8470;
      description = "Port to listen on.";
    };
    secretsKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/keys/yeet-secrets-key";
      description = ''
        Path, on the host, of the age identity secrets are encrypted to, handed to the
        service as the systemd credential `secrets-key`. Replicas must share one. Null: the
        server creates one (0400) in its state directory on first start; back it up.
      '';
    };
    database = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "postgres://yeet@db.internal/yeet";
      description = "Database URL; default: SQLite in the state directory.";
    };
    tls = {
      certificate = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/var/lib/acme/yeet.example.org/fullchain.pem";
        description = "Path of the PEM certificate chain for HTTPS.";
      };
      key = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/var/lib/acme/yeet.example.org/key.pem";
        description = ''
          Path, on the server, of the PEM private key for HTTPS. A string, never a Nix
          path: it must not be copied into the Nix store.
        '';
      };
    };
    trustedCacheKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Keys a release's closures must be signed by (checked when non-empty).";
    };
    caches = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Binary caches hosts fetch from, besides the embedded one.";
    };
    publicUrls = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "https://yeet.example.org" ];
      description = ''
        URLs agents and operators reach this server by. Every request's signature names the
        server it is for, and requests signed for any other server (one that shares operator
        keys, say) are refused. Required unless `address` is a loopback address (the build's
        config check fails without it); empty on loopback: the server's own address and port.
      '';
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the port in the firewall.";
    };
    osquery = lib.mkOption {
      type = lib.types.attrsOf (lib.types.oneOf [ lib.types.ints.unsigned lib.types.str ]);
      default = { };
      example = { log_retention_days = 90; forward_file = "/var/log/yeet/osquery-results.jsonl"; };
      description = ''
        The osquery remote API's limits (server.toml's [osquery]): max_body_bytes,
        log_retention_days, node_burst, node_refill_ms, max_block_bytes, max_carve_bytes,
        max_open_carves, accelerate_secs, and forward_file or forward_url to send every result
        line to a SIEM as JSON lines. Unset keys keep the server's defaults.
      '';
    };

    auditLogFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/var/log/yeet-server/audit.jsonl";
      description = ''
        Also write every audit event to this file, one JSON object per line, for a SIEM to
        follow (at least once; `<file>.seq` holds how far it got, so rotating the file away
        is safe). Its directory is made writable for the service; /var/log/yeet-server
        exists for it.
      '';
    };

    defaultRolloutPolicy = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "prod";
      description = ''
        The rollout policy of releases that name none (`yeet publish --rollout`); null:
        they reach every host at once. `yeet publish --now` always does.
      '';
    };
    rolloutPolicies = lib.mkOption {
      type = lib.types.attrsOf toml.type;
      default = { };
      example = {
        prod = { waves = [ "tag:canary" "10%" "50%" "100%" ]; bake_secs = 900; max_failures = "1"; on_failure = "rollback"; health = [ "failed-units=0" ]; };
      };
      description = ''
        Rollout policies (server.toml's [rollout_policies.NAME]; the fields of `yeet rollout
        policy set`: waves, bake_secs, max_failures, on_failure, health, min_online), set at
        every start of the server, so that the fleet's flake carries them. The build's
        config check rejects a malformed one.
      '';
    };
    maintenanceWindows = lib.mkOption {
      type = lib.types.attrsOf toml.type;
      default = { };
      example = {
        nights = { tags = [ "prod" ]; days = "mon-fri"; from = "02:00"; to = "04:00"; tz = "Europe/Zurich"; };
      };
      description = ''
        Maintenance windows (server.toml's [maintenance_windows.NAME]; the fields of `yeet
        window set`: tags, days, from, to, tz): hosts carrying a window's tags start
        activations only inside it. Set at every start of the server.
      '';
    };

    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = ''
        Further server.toml keys, for settings newer than this module. The file is checked
        with `yeet-server check-config` at build time: an unknown key fails the build.
      '';
    };
  } // builtins.listToAttrs (map tuningOption serverSettings.tuning);

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = (cfg.tls.certificate == null) == (cfg.tls.key == null);
        message = "services.yeet-server.tls needs both certificate and key";
      }
      {
        assertion = !(inStore cfg.tls.key);
        message = "services.yeet-server.tls.key is in the Nix store, which every user can read; give the path of a secret deployed outside the store (a string, not a Nix path).";
      }
    ];
    environment.etc."yeet/server.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.yeet-server = {
      description = "yeet server";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" "postgresql.service" ];
      # A config-only change restarts the server too.
      restartTriggers = [ configFile ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/yeet-server serve";
        Restart = "on-failure";
        DynamicUser = true;
        StateDirectory = "yeet-server";
        StateDirectoryMode = "0700";
        LogsDirectory = "yeet-server";
        LogsDirectoryMode = "0750";
        ReadWritePaths = lib.optional (cfg.auditLogFile != null) (dirOf cfg.auditLogFile);
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        # Every held long-poll is an open socket: room for max_connections (16384) plus
        # the database and cache files. The server also raises its soft limit to this.
        LimitNOFILE = 65536;
      } // lib.optionalAttrs (cfg.secretsKey != null) {
        # Read by systemd as root, given to the dynamic user under $CREDENTIALS_DIRECTORY.
        LoadCredential = [ "secrets-key:${cfg.secretsKey}" ];
      };
    };
  };
}
