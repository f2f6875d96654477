# Renders a service written in NixOS's `systemd.services.<name>` terms into a unit file,
# the way NixOS does: `path` becomes Environment=PATH (bin, then sbin, of each package,
# then what NixOS adds to every unit), stopIfChanged and restartTriggers become
# X-StopIfChanged and X-Restart-Triggers. A key it does not know is an error, so the shared
# service definition cannot grow a setting the test hosts silently ignore.
{ service, defaultPath }:
let
  known = [ "description" "wants" "after" "path" "stopIfChanged" "restartTriggers" "unitConfig" "serviceConfig" ];
  unknown = builtins.filter (k: !(builtins.elem k known)) (builtins.attrNames service);
  value = v: if builtins.isBool v then (if v then "true" else "false") else toString v;
  lines = attrs: builtins.concatStringsSep "\n" (map (k: "${k}=${value attrs.${k}}") (builtins.attrNames attrs));
  path = (service.path or [ ]) ++ defaultPath;
  searchPath = builtins.concatStringsSep ":" (map (p: "${p}/bin") path ++ map (p: "${p}/sbin") path);
  words = builtins.concatStringsSep " ";
in
if unknown != [ ] then throw "unit.nix does not know how NixOS renders ${words unknown}" else ''
  [Unit]
  Description=${service.description}
  Wants=${words (service.wants or [ ])}
  After=${words (service.after or [ ])}
  X-Restart-Triggers=${words (map toString (service.restartTriggers or [ ]))}
  ${lines (service.unitConfig or { })}

  [Service]
  Environment="PATH=${searchPath}"
  X-StopIfChanged=${value (service.stopIfChanged or true)}
  ${lines (service.serviceConfig or { })}
''
