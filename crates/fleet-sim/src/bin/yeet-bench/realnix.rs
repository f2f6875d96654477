//! `yeet-bench realnix [N]`: N real-Nix simulated hosts (default 50; namespace hosts, each
//! with its own /nix store, booted in parallel) converge on one release. Printed: the
//! publish command's time, time to full convergence, and per phase (p50 / p99 / max over
//! the hosts): wake (publish to the agent starting the activation), fetch (realise and
//! verify the closure), switch (profile and switch-to-configuration), confirm (until the
//! restarted agent confirms), report (until the agent has reported to the server). Phase
//! boundaries come from the activation log's time stamps and the agent's `at_ms` fields.
//! Also the server's share of the CPU time the whole machine spent converging.
//!
//! `realnix N rollout` publishes by a four-wave rollout policy (10%, 25%, 50%, the rest; no
//! bake) instead of to every host at once, and also prints, for each wave after the
//! first, the delay from its gate passing (the last host of the wave before reporting its
//! confirmation, by the agents' own logs) to the server opening the wave (its audit
//! event) and to each of the wave's hosts starting its activation.

use std::time::{Duration, Instant};

use fleet_sim::sim::{Fleet, FleetOptions, Variant, wait_until};

use crate::{percentile, proc_stat};

/// Unix ms of an activation-log line `yeet HH:MM:SS.mmm: <message>...` that starts with
/// `message`, taking the date from `near` (a Unix ms within 12 hours of it).
fn stamped(log: &str, message: &str, near: i64) -> Option<i64> {
    let line = log.lines().find(|l| {
        l.split_once(": ")
            .is_some_and(|(_, m)| m.starts_with(message))
    })?;
    let stamp = line.strip_prefix("yeet ")?.split_once(": ")?.0;
    let mut parts = stamp.split([':', '.']).map(|p| p.parse::<i64>().ok());
    let (h, m, s, ms) = (
        parts.next()??,
        parts.next()??,
        parts.next()??,
        parts.next()??,
    );
    let of_day = ((h * 60 + m) * 60 + s) * 1000 + ms;
    let day = near - near.rem_euclid(86_400_000);
    let mut at = day + of_day;
    if at < near - 43_200_000 {
        at += 86_400_000;
    }
    Some(at)
}

/// Jiffies the whole machine has spent busy (all CPUs), from /proc/stat.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system (idle iowait) irq softirq steal
    cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]
}

fn summary(name: &str, mut ms: Vec<i64>) {
    ms.sort_unstable();
    if ms.is_empty() {
        println!("  {name:<8} no data");
        return;
    }
    println!(
        "  {name:<8} p50 {:>6} ms   p99 {:>6} ms   max {:>6} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}

/// The waves of `yeet rollout status --json`: each wave's host names.
fn rollout_waves(fleet: &Fleet) -> Vec<Vec<String>> {
    let status: serde_json::Value = fleet.server.yeet_json(&["rollout", "status"]);
    status["waves"]
        .as_array()
        .map(|waves| {
            waves
                .iter()
                .map(|w| {
                    w["hosts"]
                        .as_array()
                        .map(|hs| {
                            hs.iter()
                                .filter_map(|h| h["name"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// For each wave after the first: gate (the wave before's last confirmation report) to
/// the wave-opened event, and gate to each of its hosts starting to activate.
fn wave_delays(fleet: &Fleet) {
    let waves = rollout_waves(fleet);
    let events: serde_json::Value =
        fleet
            .server
            .yeet_json(&["audit", "--action", "rollout.wave-opened", "--limit", "100"]);
    let mut opened: Vec<i64> = events
        .as_array()
        .map(|es| es.iter().filter_map(|e| e["at_ms"].as_i64()).collect())
        .unwrap_or_default();
    opened.sort_unstable();
    let at = |name: &str, message: &str| {
        fleet
            .hosts
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.logged_at_ms(message, ""))
    };
    let mut all = Vec::new();
    println!(
        "waves (hosts): {:?}",
        waves.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for w in 1..waves.len() {
        let Some(gate) = waves[w - 1]
            .iter()
            .filter_map(|h| at(h, "activation reported"))
            .max()
        else {
            continue;
        };
        let opened_after = opened.get(w).map(|o| o - gate);
        let wakes: Vec<i64> = waves[w]
            .iter()
            .filter_map(|h| at(h, "activating a new system"))
            .map(|t| t - gate)
            .collect();
        all.extend(&wakes);
        print!(
            "  wave {}: opened {} ms after the gate;",
            w + 1,
            opened_after.map_or("?".into(), |d| d.to_string())
        );
        summary("wake", wakes);
    }
    summary("all", all);
}

pub fn realnix(n: usize, rollout: bool) {
    let names: Vec<String> = (1..=n).map(|i| format!("real-{i:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let booting = Instant::now();
    let mut fleet = Fleet::with(
        &[],
        FleetOptions {
            confirm_timeout: 600,
            server_config: "registration_burst = 100000\nmax_pending = 100000\nmax_connections_per_network = 60000\n".into(),
            ..Default::default()
        },
    );
    fleet.add_hosts_in_parallel(&names, 8);
    let booted = booting.elapsed().as_secs_f64();
    let system = fleet.system("realnix-system", Variant::Good, "6.1");
    std::thread::sleep(Duration::from_secs(3));
    let pairs: Vec<(&str, &str)> = names.iter().map(|h| (*h, system.as_str())).collect();
    let server_pid = fleet.server.proc.child.id();
    let (server_ticks, _) = proc_stat(server_pid);
    let machine_ticks = machine_busy_ticks();
    if rollout {
        fleet.server.yeet(&[
            "rollout", "policy", "set", "bench", "--wave", "10%", "--wave", "25%", "--wave", "50%",
            "--wave", "100%",
        ]);
    }
    let published = yeet_proto::clock::unix_now_ms();
    let started = Instant::now();
    let key = fleet.cache.secret_key.display().to_string();
    let mut extra = vec!["--signing-key", key.as_str()];
    if rollout {
        extra.extend(["--rollout", "bench"]);
    }
    fleet.publish_with(&pairs, "realnix", &extra);
    let publish_s = started.elapsed().as_secs_f64();
    // A loaded server may answer a poll late or `busy`: that is a figure, not the end of the
    // benchmark.
    let mut transient = 0usize;
    wait_until(Duration::from_secs(3600), "convergence", || {
        match fleet.server.client().hosts() {
            Ok(hosts) => names.iter().all(|n| {
                hosts.iter().any(|h| {
                    h.name == *n
                        && h.current_system.as_deref() == Some(system.as_str())
                        && h.state == yeet_proto::api::HostState::Standby
                })
            }),
            Err(e) => {
                transient += 1;
                eprintln!("realnix: a status poll failed ({e}); polling on");
                false
            }
        }
    });
    let converged = started.elapsed().as_secs_f64();
    let server_share = (proc_stat(server_pid).0 - server_ticks) as f64
        / (machine_busy_ticks() - machine_ticks).max(1) as f64;
    let mut phases: [Vec<i64>; 5] = Default::default();
    for host in &fleet.hosts {
        let log = match fleet.server.client().latest_log(&host.name) {
            Ok(latest) => latest.log,
            Err(e) => {
                transient += 1;
                eprintln!(
                    "realnix: {}'s log could not be read ({e}); its phases are left out",
                    host.name
                );
                continue;
            }
        };
        let activating = host.logged_at_ms("activating a new system", "");
        let reported = host.logged_at_ms("activation reported", "");
        let marks = [
            Some(published),
            activating,
            stamped(&log, "fetching", published),
            stamped(&log, "setting the system profile", published),
            stamped(&log, "switched; waiting", published),
            stamped(&log, "confirmed by the agent", published),
            reported,
        ];
        // wake: publish → activating; fetch: fetching → setting; switch: setting →
        // switched; confirm: switched → confirmed; report: confirmed → reported.
        for (phase, (from, to)) in [(0, 1), (2, 3), (3, 4), (4, 5), (5, 6)].iter().enumerate() {
            if let (Some(a), Some(b)) = (marks[*from], marks[*to]) {
                phases[phase].push(b - a);
            }
        }
    }
    println!("{n} namespace hosts with real Nix (booted and approved in {booted:.0} s)");
    println!("yeet publish: {publish_s:.1} s; all {n} converged {converged:.1} s after it started");
    println!(
        "transient errors (polls and log reads that failed and were tried again or skipped): {transient}"
    );
    println!("per phase, over the hosts:");
    for (name, ms) in ["wake", "fetch", "switch", "confirm", "report"]
        .iter()
        .zip(phases)
    {
        summary(name, ms);
    }
    println!(
        "server's share of the machine's busy CPU time while converging: {:.1} %",
        100.0 * server_share
    );
    if rollout {
        println!("a four-wave rollout (10%, 25%, 50%, the rest; no bake); from each gate:");
        wave_delays(&fleet);
    }
    // Dropping the fleet powers its hosts off in parallel.
    drop(fleet);
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_stamps_are_read_relative_to_a_nearby_time() {
        let log = "yeet 23:59:59.500: fetching x\nbuilding\nyeet 00:00:00.250: setting the system profile and running y\n";
        let near = 1_732_406_399_000; // 2024-11-23T23:59:59Z
        assert_eq!(super::stamped(log, "fetching", near), Some(near + 500));
        assert_eq!(
            super::stamped(log, "setting the system profile", near),
            Some(near + 1250)
        );
        assert_eq!(super::stamped(log, "confirmed", near), None);
    }
}
