#!/usr/bin/env bash
# The whole yeet test suite. Works on a fresh Debian 12 machine with only the Rust toolchain:
# installs the real peers the tests use (Nix, age, OpenSSH's ssh-keygen, openssl,
# systemd-nspawn for the hosts that boot systemd, PostgreSQL client) and, when nothing
# answers on 127.0.0.1:5432, starts a throwaway PostgreSQL cluster so that the PostgreSQL
# tests never skip.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v nix-store >/dev/null || need+=(nix-bin)
command -v age >/dev/null || need+=(age)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v openssl >/dev/null || need+=(openssl)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v git >/dev/null || need+=(git)
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
pg_up || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! pg_up; then
  pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  pgdir=$(mktemp -d /tmp/yeet-pg.XXXXXX)
  chown postgres: "$pgdir"
  echo "test.sh: no PostgreSQL on 127.0.0.1:5432; starting a throwaway cluster in $pgdir"
  runuser -u postgres -- "$pgbin/initdb" -D "$pgdir/data" -U postgres --auth=trust >/dev/null
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
    -o "-h 127.0.0.1 -p 5432 -k $pgdir" start >/dev/null
  trap 'runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null; rm -rf "$pgdir"' EXIT
  runuser -u postgres -- "$pgbin/psql" -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE test' >/dev/null
fi

# The independent varlink client of the local-socket tests: PyPI's pure-Python package,
# where the test hosts' Python (Debian's /usr/bin/python3) and their users can read it.
if [ ! -d /opt/yeet-test-python/varlink ]; then
  [ -x /usr/bin/python3 ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null; }
  command -v pip >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null; }
  pip install --quiet --target /opt/yeet-test-python varlink==31.0.0
fi

# --all-targets builds the binaries with the same features as `cargo test`, so the
# fleet-sim harness (which runs the same command) finds them up to date.
cargo build --workspace --all-targets --quiet
# The whole-system tests mostly wait (for Nix, for agents, for deadlines), so six run at
# once even on two cores: the suite takes about 60% of the time it takes with one per core.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}"
# Every test binary runs, so that one failure does not hide the others.
cargo test --workspace --no-fail-fast "$@"
