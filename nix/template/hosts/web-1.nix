# web-1: replace with the host's hardware configuration and services.
{ ... }:
{
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  services.nginx.enable = true;
  networking.firewall.allowedTCPPorts = [ 80 ];
}
