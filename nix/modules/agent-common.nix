# What the NixOS and the nix-darwin agent modules share besides their options: the config
# file, checked by the agent's own parser at build time (a typo, a bad value, a private key
# in the store or the template's placeholder key fails the build with the agent's message,
# not the agent on the host), and the assertion that keeps the private key out of the store.
{ lib, pkgs, cfg }:
let
  toml = pkgs.formats.toml { };
in
{
  configFile = pkgs.runCommand "agent.toml" { } ''
    cp ${toml.generate "agent.toml" (import ./agent-settings.nix cfg)} $out
    ${cfg.package}/bin/yeet-agent check-config $out
  '';
  assertions = [{
    assertion = cfg.key == null || !(lib.hasPrefix builtins.storeDir (toString cfg.key));
    message = "services.yeet-agent.key is in the Nix store, which every user can read; give the path of a secret deployed outside the store (a string, not a Nix path).";
  }];
  settingsType = toml.type;
}
