# A yeet fleet. Edit the hosts, then:
#   yeet publish --all --signing-key ./cache-key.sec
# builds every host's system, pushes it to the server's embedded cache and creates a release.
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # This project, through your flake registry: `nix registry add yeet <your copy>`.
    yeet.url = "flake:yeet";
    yeet.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, yeet }:
    let
      fleet = {
        server = "https://yeet.example.org:8470";
        # nix-store --generate-binary-cache-key fleet-1 cache-key.sec cache-key.pub
        trustedKeys = [ "fleet-1:REPLACE-WITH-THE-CONTENT-OF-cache-key.pub" ];
      };
      host = name: modules: nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          yeet.nixosModules.yeet-agent
          {
            networking.hostName = name;
            services.yeet-agent = { enable = true; inherit (fleet) server trustedKeys; };
            system.stateVersion = "24.11";
          }
        ] ++ modules;
      };
    in
    {
      nixosConfigurations = {
        web-1 = host "web-1" [ ./hosts/web-1.nix ];
        db-1 = host "db-1" [ ./hosts/db-1.nix ];
      };
    };
}
