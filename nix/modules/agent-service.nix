# The yeet-agent systemd service, in NixOS's `systemd.services.<name>` terms. The NixOS
# module uses it as it is, and the test fleet's systemd hosts render the very same attribute
# set into a unit file (crates/fleet-sim/nix/unit.nix), so the harness cannot drift from
# what a real host runs.
#
# package: provides bin/yeet-agent. configFile: the agent.toml this system carries.
# tools: { nix, systemd, util-linux, bash } (and polkit, for pkcheck, where polkit runs),
# the packages on the agent's PATH.
{ package, configFile, tools }:
{
  description = "yeet agent";
  wants = [ "network-online.target" ];
  after = [ "network-online.target" ];
  # The agent and its activation processes run nix-store and nix-env, systemd-run and
  # systemctl, setsid; the health check runs in /bin/sh, and bash is there for checks that
  # call it. NixOS adds coreutils, findutils, grep, sed and systemd to every unit's PATH.
  path = [ tools.nix tools.systemd tools.util-linux tools.bash ]
    ++ (if tools ? polkit then [ tools.polkit ] else [ ]);
  # A switch restarts the agent (not stop-then-start): the restarted agent, running the new
  # system's binary with the new system's config, is what confirms the new system.
  stopIfChanged = false;
  # NixOS restarts a unit only when its unit file changes. The config file is part of the
  # unit's identity: a system that changes only agent.toml restarts the agent too, so that
  # the new config is the one that has to reach the server.
  restartTriggers = [ configFile ];
  unitConfig = {
    # Every switch restarts the agent: a burst of releases must never exhaust a start
    # limit and leave the host without its agent (and without its rollback). RestartSec
    # bounds the restart rate instead.
    StartLimitIntervalSec = 0;
  };
  serviceConfig = {
    ExecStart = "${package}/bin/yeet-agent run";
    Restart = "always";
    RestartSec = 2;
    StateDirectory = "yeet";
    # The activation log and state are root's alone (the agent sets this too).
    StateDirectoryMode = "0700";
    RuntimeDirectory = "yeet";
    # The local socket's directory, the live secrets and the agent's pid stay across its
    # restarts.
    RuntimeDirectoryPreserve = true;
  };
}
