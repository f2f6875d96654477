# The yeet workspace: one build installs `yeet`, `yeet-server` and `yeet-agent`.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "yeet";
  version = "0.1.0";
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type: !(lib.hasInfix "/target" path);
  };
  cargoLock.lockFile = ../Cargo.lock;
  # The test suite needs root, real Nix, PostgreSQL and network namespaces: run ./test.sh.
  doCheck = false;
  meta = {
    description = "Pull-based deployment for NixOS fleets";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "yeet";
  };
}
