# NixOS module: services.yeet-server, the control plane (SQLite in its state directory by
# default, or PostgreSQL), with its embedded binary cache.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.yeet-server;
  toml = pkgs.formats.toml { };
  settings = {
    listen = "${cfg.address}:${toString cfg.port}";
    state_dir = "/var/lib/yeet-server";
    trusted_cache_keys = cfg.trustedCacheKeys;
    caches = cfg.caches;
    public_urls = cfg.publicUrls;
  } // lib.optionalAttrs (cfg.database != null) { database = cfg.database; }
    // lib.optionalAttrs (cfg.tls.certificate != null) { tls_cert = cfg.tls.certificate; tls_key = cfg.tls.key; }
    // cfg.settings;
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
    database = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "postgres://yeet@db.internal/yeet";
      description = "Database URL; default: SQLite in the state directory.";
    };
    tls = {
      certificate = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        description = "PEM certificate chain for HTTPS.";
      };
      key = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        description = "PEM private key for HTTPS.";
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
        server it is for; with this set, requests signed for any other server (one that
        shares operator keys, say) are refused. Empty: the signed origin must match the
        request's Host header.
      '';
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the port in the firewall.";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = "Further settings for /etc/yeet/server.toml.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [{
      assertion = (cfg.tls.certificate == null) == (cfg.tls.key == null);
      message = "services.yeet-server.tls needs both certificate and key";
    }];
    environment.etc."yeet/server.toml".source = toml.generate "server.toml" settings;
    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.yeet-server = {
      description = "yeet server";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" "postgresql.service" ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/yeet-server serve";
        Restart = "on-failure";
        DynamicUser = true;
        StateDirectory = "yeet-server";
        StateDirectoryMode = "0700";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        # Every held long-poll is an open socket: room for max_connections (16384) plus
        # the database and cache files. The server also raises its soft limit to this.
        LimitNOFILE = 65536;
      };
    };
  };
}
