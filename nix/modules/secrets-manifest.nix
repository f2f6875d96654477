# What `yeet.secrets.<name>` defaults to, and the manifest the options become
# (etc/yeet/secrets.json in the system, read by the agent before it switches to it). Plain
# Nix with no nixpkgs, so that the NixOS and nix-darwin modules and the test fleet's
# systems write the very same file.
rec {
  defaults = name: {
    path = "/run/yeet/secrets/${name}";
    owner = "root";
    group = "root";
    mode = "0400";
    restartUnits = [ ];
  };
  # Only the manifest's own fields: options a newer module adds stay out of older agents' way.
  manifest = secrets: builtins.toJSON {
    secrets = builtins.mapAttrs
      (name: s: defaults name // builtins.intersectAttrs (defaults name) s)
      secrets;
  };
}
