#!/usr/bin/env bash
# yeet's demo on a fresh Debian machine: builds yeet, starts a server on the embedded defaults
# (SQLite in a temporary state directory), enrolls three hosts with their own SSH host keys,
# approves them by the codes they show, publishes a release of real Nix-built systems and
# prints the fleet status. Everything runs on loopback and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v nix-build >/dev/null || need+=(nix-bin)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if ((${#need[@]})); then
  echo "demo: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "demo: building yeet"
cargo build --quiet --bins --workspace
bin=$PWD/target/debug
work=$(mktemp -d /tmp/yeet-demo.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. an operator key, made an admin offline on the server host (no trust-on-first-use)"
"$bin/yeet" key generate --out "$work/admin_key" | head -n 2
"$bin/yeet-server" --state-dir "$work/server" admin add demo-admin --key "$work/admin_key.pub"

step "2. the server, on its defaults (SQLite in the state directory, loopback)"
printf 'checkin_interval_secs = 2\n' > "$work/server.toml"
"$bin/yeet-server" --config "$work/server.toml" --state-dir "$work/server" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
export YEET_SERVER; YEET_SERVER=$(sed -n 's/^yeet-server listening on //p' "$work/server.out")
export YEET_KEY=$work/admin_key
echo "server at $YEET_SERVER"

step "3. three hosts start yeet-agent with their SSH host keys and show verification codes"
hosts=(web-1 web-2 db-1)
for h in "${hosts[@]}"; do
  ssh-keygen -q -t ed25519 -N '' -C "root@$h" -f "$work/$h.key"
  "$bin/yeet-agent" run --server "$YEET_SERVER" --key "$work/$h.key" --hostname "$h" --poll-interval 1 >"$work/$h.out" 2>"$work/$h.log" &
  pids+=($!)
done
declare -A code
for h in "${hosts[@]}"; do
  for _ in $(seq 100); do grep -q 'verification code' "$work/$h.out" 2>/dev/null && break; sleep 0.1; done
  code[$h]=$(sed -n 's/^verification code: //p' "$work/$h.out" | tail -n 1)
  echo "$h shows: ${code[$h]}"
done

step "4. the admin sees them waiting (codes are never listed: they prove the admin saw the host)"
"$bin/yeet" pending

step "5. the admin approves each host by its code"
for h in "${hosts[@]}"; do "$bin/yeet" approve "$h" "${code[$h]}"; done

step "6. real Nix builds a system per host role, and a release names them"
cat > "$work/systems.nix" <<'NIX'
let sys = role: derivation {
  name = "nixos-system-${role}"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/bin:/usr/bin"; args = [ "-c" "mkdir -p $out/bin; echo ${role} > $out/role" ];
}; in { web = sys "web"; db = sys "db"; }
NIX
web=$(nix-build "$work/systems.nix" -A web --no-out-link 2>/dev/null)
db=$(nix-build "$work/systems.nix" -A db --no-out-link 2>/dev/null)
"$bin/yeet" publish --path "web-1=$web" --path "web-2=$web" --path "db-1=$db" -m "demo: first release"
"$bin/yeet" releases

step "7. the fleet: every host checked in and knows its desired system"
sleep 3
"$bin/yeet" status
echo
echo "(Pulling, verifying and activating the desired systems, with rollback, is the agent's next step.)"
