# Stand-ins for the Nixpkgs packages a NixOS unit's PATH is made of: each is a store path
# whose bin/ holds only that package's tools (links to the machine's own binaries). A
# test host's agent then sees the PATH a NixOS host's agent sees, and a tool the module
# does not put there is missing, as it would be on NixOS.
{ drv }:
let
  farm = name: tools: drv {
    name = "${name}-tools";
    inherit tools;
    args = [ "-c" ''
      mkdir -p $out/bin
      for t in $tools; do
        for d in /usr/bin /bin /usr/sbin /sbin; do
          if [ -e "$d/$t" ]; then ln -s "$d/$t" "$out/bin/$t"; break; fi
        done
      done
    '' ];
  };
in
{
  nix = farm "nix" "nix nix-store nix-env nix-build nix-instantiate nix-collect-garbage nix-hash nix-copy-closure";
  systemd = farm "systemd" "systemctl systemd-run journalctl busctl systemd-escape systemd-notify";
  util-linux = farm "util-linux" "setsid mount umount flock nsenter unshare kill logger";
  bash = farm "bash" "bash sh";
  coreutils = farm "coreutils" "cat cp ln ls mv rm mkdir rmdir readlink realpath echo printf test true false sleep env id chmod chown touch head tail cut sort uniq wc tr date basename dirname stat mktemp tee";
  findutils = farm "findutils" "find xargs";
  gnugrep = farm "gnugrep" "grep";
  gnused = farm "gnused" "sed";
}
