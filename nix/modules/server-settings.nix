# The server.toml that a services.yeet-server configuration writes. Plain Nix (no nixpkgs),
# so that the test suite can evaluate it with every option set and check the result with
# `yeet-server check-config`. `tuning` lists the limits and intervals: the module makes
# each a typed option (null: the server's default), and `render` writes the set ones.
rec {
  # option name, config key, type (int, or bool), the server's default, what it does.
  tuning = [
    [ "maxBodyBytes" "max_body_bytes" "int" "1048576" "Largest JSON request body, in bytes." ]
    [ "clockSkew" "clock_skew_secs" "int" "300" "Seconds a signed request's timestamp may differ from the server's clock (at most 3600)." ]
    [ "codeTtl" "code_ttl_secs" "int" "900" "Seconds a pending host's verification code stays valid." ]
    [ "maxPending" "max_pending" "int" "1000" "Hosts that may wait for approval at once." ]
    [ "registrationBurst" "registration_burst" "int" "30" "Registrations one network may send in a burst." ]
    [ "registrationRefillMs" "registration_refill_ms" "int" "2000" "Milliseconds for one network to earn one more registration." ]
    [ "reregisterIntervalMs" "reregister_interval_ms" "int" "500" "Shortest interval between two registrations of one pending key, in milliseconds." ]
    [ "noncesPerKey" "nonces_per_key" "int" "65536" "Requests one key may sign within a clock-skew window." ]
    [ "maxUploadsPerKey" "max_uploads_per_key" "int" "4" "Uploads to the embedded cache one key may run at once." ]
    [ "checkinInterval" "checkin_interval_secs" "int" "30" "Seconds between an idle host's check-ins, when it does not long-poll." ]
    [ "offlineAfter" "offline_after_secs" "int" "600" "Seconds without a check-in after which a host is shown offline." ]
    [ "maxLongPoll" "max_long_poll_secs" "int" "55" "The longest the server holds a check-in open." ]
    [ "lastSeenFlushMs" "last_seen_flush_ms" "int" "2000" "Milliseconds between writes of the hosts' last-seen times." ]
    [ "acceptSuggestedTags" "accept_suggested_tags" "bool" "false" "Give a host the tags its agent suggests when an admin approves it (otherwise they are shown, and accepted with yeet host tag --accept-suggested)." ]
    [ "embeddedCache" "embedded_cache" "bool" "true" "Serve the embedded binary cache under /cache." ]
    [ "maxUploadBytes" "max_upload_bytes" "int" "8589934592" "Largest NAR the embedded cache accepts, in bytes." ]
    [ "maxConnections" "max_connections" "int" "16384" "Open connections the server accepts (lowered to fit its file limit)." ]
    [ "maxConnectionsPerNetwork" "max_connections_per_network" "int" "1024" "Open connections from one network (an IPv4 address or an IPv6 /64)." ]
    [ "databaseMaxConnections" "database_max_connections" "int" "4 on SQLite, 16 on PostgreSQL" "Database connections for requests, per server process; each also holds two more (nonce log, replica events), so replicas × (this + 2) must fit PostgreSQL's max_connections." ]
    [ "headerTimeout" "header_timeout_secs" "int" "15" "Seconds allowed for a TLS handshake and for each request's headers." ]
    [ "bodyTimeout" "body_timeout_secs" "int" "60" "Seconds a request body may take to arrive, and an upload may stall." ]
    [ "auditRetentionDays" "audit_retention_days" "int" "0: forever" "Drop audit events older than this many days; a checkpoint event keeps the hash chain verifiable." ]
  ];
  render = cfg:
    let
      optional = key: value: if value == null then { } else { ${key} = value; };
      set = builtins.foldl' (acc: t: acc // optional (builtins.elemAt t 1) cfg.${builtins.elemAt t 0}) { } tuning;
    in
    {
      listen = "${cfg.address}:${toString cfg.port}";
      state_dir = "/var/lib/yeet-server";
      trusted_cache_keys = cfg.trustedCacheKeys;
      caches = cfg.caches;
      public_urls = cfg.publicUrls;
      # [osquery]: limits and retention of the osquery remote API.
      osquery = cfg.osquery or { };
      # Declared rollout policies and maintenance windows, set at every start.
      rollout_policies = cfg.rolloutPolicies or { };
      maintenance_windows = cfg.maintenanceWindows or { };
    }
    // optional "default_rollout_policy" (cfg.defaultRolloutPolicy or null)
    // optional "database" cfg.database
    // optional "tls_cert" cfg.tls.certificate
    // optional "tls_key" cfg.tls.key
    // optional "audit_log_file" cfg.auditLogFile
    // set
    // cfg.settings;
}
