//! The core scenarios on hosts that boot a real systemd (systemd-nspawn): the agent runs as
//! `yeet-agent.service` from the unit its system carries, rendered from the NixOS module's
//! own service definition, under a service manager whose PATH holds only systemd's tools
//! (as on NixOS); switches restart it with `systemctl restart` when its unit changed, and
//! activations run in transient units started with `systemd-run`. The assertions are the
//! namespace hosts' (tests/common).

#![allow(clippy::unwrap_used)]

mod common;

use fleet_sim::sim::HostKind::Systemd;

#[test]
fn switch_and_confirm() {
    common::switch_and_confirm(Systemd, &["web-1", "web-2"]);
}

#[test]
fn a_failing_switch_rolls_back() {
    common::a_failing_switch_rolls_back_and_its_log_is_kept(Systemd);
}

#[test]
fn a_config_only_change_that_cuts_the_agent_off_rolls_back() {
    common::a_config_only_change_that_cuts_the_agent_off_rolls_back(Systemd);
}

#[test]
fn an_agent_that_cannot_start_rolls_back_and_comes_back() {
    common::an_agent_that_cannot_start_rolls_back_and_comes_back(Systemd);
}

#[test]
fn a_failing_health_check_rolls_back() {
    common::a_failing_health_check_rolls_back_at_once(Systemd);
}

#[test]
fn killing_the_agent_mid_activation_converges() {
    common::killing_the_agent_mid_activation_converges(Systemd);
}

#[test]
fn a_kernel_change_takes_a_reboot() {
    common::a_kernel_change_takes_a_reboot(Systemd);
}

#[test]
fn boot_mode_applies_at_the_next_boot() {
    common::boot_mode_applies_at_the_next_boot(Systemd);
}

#[test]
fn a_burst_of_releases_ends_on_the_last() {
    common::a_burst_of_releases_ends_on_the_last(Systemd);
}
