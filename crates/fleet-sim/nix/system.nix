# A test "NixOS system": a real derivation whose bin/switch-to-configuration does to the
# simulated host what NixOS's does: installs the system's agent configuration, points
# /run/current-system at itself, and restarts the agent (the harness's supervisor starts it
# again, as systemd would). Variants fail the switch, carry an agent config that cannot
# reach the server, fail the health check, or bring another kernel.
{ name, server, trustedKey, variant ? "good", kernel ? "6.1", confirmTimeout ? 20, salt ? "", extraConfig ? "", system ? builtins.currentSystem }:
let
  kernelPkg = derivation {
    name = "linux-${kernel}";
    inherit system;
    builder = "/bin/sh";
    PATH = "/bin:/usr/bin";
    args = [ "-c" "mkdir -p $out; echo ${kernel} > $out/bzImage; echo initrd-${kernel} > $out/initrd" ];
  };
in derivation {
  inherit name server trustedKey variant confirmTimeout salt extraConfig;
  kernelPkg = kernelPkg;
  inherit system;
  builder = "/bin/sh";
  PATH = "/bin:/usr/bin";
  args = [ "-c" (builtins.readFile ./build-system.sh) ];
}
