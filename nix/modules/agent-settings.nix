# The agent.toml that a services.yeet-agent configuration writes: each option's config
# key. Plain Nix (no nixpkgs), so that the test suite can evaluate it with every option set
# and check the result with `yeet-agent check-config`; the NixOS and nix-darwin modules
# both use it. An option left null leaves its key out: the agent's default applies.
cfg:
let
  optional = key: value: if value == null then { } else { ${key} = value; };
in
{
  server = cfg.server;
  trusted_keys = cfg.trustedKeys;
  activation_mode = cfg.activationMode;
  socket_group = cfg.socketGroup;
  admin_group = cfg.adminGroup;
}
// optional "key" cfg.key
// optional "ca_cert" cfg.caCert
// optional "hostname" cfg.hostname
// optional "poll_interval_secs" cfg.pollInterval
// optional "long_poll_secs" cfg.longPoll
// optional "confirm_timeout_secs" cfg.confirmTimeout
// optional "health_check" cfg.healthCheck
// optional "allowed_cache_schemes" cfg.allowedCacheSchemes
// optional "max_checkin_interval_secs" cfg.maxCheckinInterval
// optional "reboot" cfg.reboot
// (if cfg.suggestTags == [ ] then { } else { suggest_tags = cfg.suggestTags; })
// cfg.settings
