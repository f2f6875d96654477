# The `yeet.secrets` option, shared by the NixOS and the nix-darwin module: the secrets a
# system needs, by name. The agent fetches them before it switches to the system and puts
# each at its `path` (reference it as config.yeet.secrets.<name>.path); the content never
# enters the Nix store.
{ lib }:
let
  inherit (lib) mkOption types;
  inherit (import ./secrets-manifest.nix) defaults;
in
mkOption {
  default = { };
  example = lib.literalExpression ''
    { db-password = { owner = "postgres"; restartUnits = [ "postgresql.service" ]; }; }
  '';
  description = ''
    Secrets this system needs, added with `yeet secret add NAME` and granted to the host
    with `yeet secret grant NAME HOST`. A system whose secrets are not all granted is not
    switched to.
  '';
  type = types.attrsOf (types.submodule ({ name, ... }: {
    options = {
      path = mkOption {
        type = types.str;
        default = (defaults name).path;
        description = "Where services read the secret; elsewhere than the default, a link to it.";
      };
      owner = mkOption {
        type = types.str;
        default = (defaults name).owner;
        description = "The user owning the file.";
      };
      group = mkOption {
        type = types.str;
        default = (defaults name).group;
        description = "The group owning the file.";
      };
      mode = mkOption {
        type = types.strMatching "0?[0-7]{3}";
        default = (defaults name).mode;
        description = "The file's permissions, in octal.";
      };
      restartUnits = mkOption {
        type = types.listOf types.str;
        default = (defaults name).restartUnits;
        example = [ "nginx.service" ];
        description = "Units restarted (try-restart) when the secret changes without a switch.";
      };
    };
  }));
}
