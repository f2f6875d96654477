# yeet as a flake: the package (yeet, yeet-server and yeet-agent in one build), the NixOS
# modules for agent and server, a nix-darwin agent module, and a fleet template
# (`nix flake init -t flake:yeet`; `flake:yeet` is this project, see the README).
{
  description = "yeet: pull-based deployment for NixOS fleets";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        yeet = pkgs.callPackage ./nix/package.nix { };
        yeet-server = yeet;
        yeet-agent = yeet;
        default = yeet;
      });

      nixosModules = {
        yeet-agent = import ./nix/modules/agent.nix self;
        yeet-server = import ./nix/modules/server.nix self;
        default = {
          imports = [ self.nixosModules.yeet-agent self.nixosModules.yeet-server ];
        };
      };

      darwinModules.yeet-agent = import ./nix/modules/darwin-agent.nix self;

      templates.default = {
        path = ./nix/template;
        description = "A yeet fleet: two example hosts, published with `yeet publish --all`";
      };
    };
}
