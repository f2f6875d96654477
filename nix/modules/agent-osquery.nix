# The osqueryd flags that point nixpkgs' services.osquery at yeet-server's osquery remote
# API: enrollment with the yeet secret osquery-enroll, config, logs, distributed queries
# and carving. Pure (no pkgs), so the tests evaluate it with plain Nix.
{ serverUrl, secretPath, caCert ? null, distributedInterval ? 10 }:
let
  # osqueryd speaks HTTPS only; tls_hostname is the URL's host[:port].
  matched = builtins.match "https://([^/]+)/?" serverUrl;
  hostPort =
    if matched == null
    then throw "services.yeet-agent.osquery needs an https:// server URL (osqueryd speaks HTTPS only); got ${serverUrl}"
    else builtins.head matched;
in
{
  tls_hostname = hostPort;
  enroll_secret_path = secretPath;
  host_identifier = "hostname";
  enroll_tls_endpoint = "/osquery/enroll";
  config_plugin = "tls";
  config_tls_endpoint = "/osquery/config";
  config_refresh = 300;
  logger_plugin = "tls";
  logger_tls_endpoint = "/osquery/log";
  logger_tls_period = 10;
  logger_tls_compress = true;
  disable_distributed = false;
  distributed_plugin = "tls";
  distributed_tls_read_endpoint = "/osquery/query/read";
  distributed_tls_write_endpoint = "/osquery/query/write";
  distributed_interval = distributedInterval;
  disable_carver = false;
  carver_disable_function = false;
  carver_start_endpoint = "/osquery/carver/init";
  carver_continue_endpoint = "/osquery/carver/block";
  carver_block_size = 2000000;
} // (if caCert == null then { } else { tls_server_certs = toString caCert; })
