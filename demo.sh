#!/usr/bin/env bash
# yeet's demo on a fresh Debian machine (as root): a server on its embedded defaults, three
# simulated NixOS hosts with real Nix, enrollment by code, a release every host switches to,
# and a broken release that rolls back. See crates/fleet-sim/src/bin/yeet-demo.rs.
set -euo pipefail
cd "$(dirname "$0")"
need=()
command -v nix-build >/dev/null || need+=(nix-bin)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v unshare >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  echo "demo: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Only the binaries, in the demo's own profile (no test targets, no debug information,
# nothing optimised): the quickest cold build. Cargo shows its progress.
echo "demo: building yeet's binaries (the first build takes a few minutes)"
cargo build --profile demo --workspace --bins
# Run as built: `cargo run -p fleet-sim` would resolve features for that one package and
# build part of the tree a second time.
exec "${CARGO_TARGET_DIR:-target}/demo/yeet-demo"
