//! Benchmarks that print figures, never assert them:
//! - `latency [HOSTS]`: publish-to-activation-start latency for online, long-polling hosts
//!   (p50, p99, max over HOSTS simulated hosts, default 50);
//! - `idle [SECONDS]`: one approved agent left idle (default 600 s): its RSS and CPU use;
//! - `publish`: an already-built 20-host fleet with 5 distinct systems, published with
//!   `yeet publish` (to the embedded cache), against a plain `nix copy` of the same paths.
//!
//! Run release builds: `cargo run --release -p fleet-sim --bin yeet-bench -- latency`.

#![allow(clippy::unwrap_used)]

use fleet_sim::sim::{Fleet, Variant, wait_until};
use std::time::{Duration, Instant};

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latency(hosts: usize) {
    let names: Vec<String> = (1..=hosts).map(|i| format!("bench-{i:03}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = Fleet::new(&names, 60);
    let system = fleet.system("bench-system", Variant::Good, "6.1");
    // Let every agent settle into its long-poll.
    std::thread::sleep(Duration::from_secs(3));
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, system.as_str())).collect();
    let published = unix_ms();
    fleet.publish(&pairs, "bench");
    let publish_ms = unix_ms() - published;
    wait_until(
        Duration::from_secs(600),
        "every host to start activating",
        || {
            fleet
                .hosts
                .iter()
                .all(|h| h.agent_log().contains("activating a new system"))
        },
    );
    let mut lat: Vec<u128> = fleet
        .hosts
        .iter()
        .map(|h| {
            let log = h.agent_log();
            let line = log
                .lines()
                .find(|l| l.contains("activating a new system"))
                .unwrap();
            let at: u128 = line
                .split("at_ms=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap();
            at.saturating_sub(published)
        })
        .collect();
    lat.sort_unstable();
    println!("hosts: {hosts}");
    println!("yeet publish command: {publish_ms} ms");
    println!(
        "publish-to-activation-start: p50 {} ms, p99 {} ms, max {} ms (min {} ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        lat[0]
    );
    let converge = Instant::now();
    wait_until(Duration::from_secs(600), "convergence", || {
        let s = fleet.status();
        names
            .iter()
            .all(|n| s[*n]["current_system"] == system.as_str() && s[*n]["state"] == "standby")
    });
    println!(
        "all {hosts} confirmed {:.1} s after the last activation started",
        converge.elapsed().as_secs_f64()
    );
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .unwrap();
    (ticks, rss_kib)
}

fn idle(secs: u64) {
    let fleet = Fleet::new(&["idle-1"], 60);
    std::thread::sleep(Duration::from_secs(3));
    let pid = *fleet.hosts[0]
        .pids_matching("yeet-agent run")
        .first()
        .expect("agent running");
    let clk_tck = 100.0; // USER_HZ on Linux
    let (t0, rss0) = proc_stat(pid);
    let start = Instant::now();
    let mut peak = rss0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        peak = peak.max(proc_stat(pid).1);
    }
    let (t1, rss1) = proc_stat(pid);
    let cpu_s = (t1 - t0) as f64 / clk_tck;
    let wall = start.elapsed().as_secs_f64();
    println!(
        "idle agent over {wall:.0} s (long-poll held by the server, 20 s in the test config):"
    );
    println!("RSS: start {rss0} KiB, end {rss1} KiB, peak {peak} KiB");
    println!(
        "CPU: {cpu_s:.2} s total = {:.4} % of one core",
        100.0 * cpu_s / wall
    );
}

fn publish() {
    let names: Vec<String> = (1..=20).map(|i| format!("pub-{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = Fleet::new(&names, 60);
    let systems: Vec<String> = (1..=5)
        .map(|i| {
            fleet.build(
                &format!("bench-system-{i}"),
                Variant::Good,
                &format!("6.{i}"),
            )
        })
        .collect();
    let closure_paths = {
        let out = std::process::Command::new("nix-store")
            .arg("-qR")
            .args(&systems)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // Plain nix copy of the same closures to a fresh signed file:// cache.
    let target = tempfile::tempdir().unwrap();
    let to = format!(
        "file://{}?secret-key={}",
        target.path().display(),
        fleet.cache.secret_key.display()
    );
    let started = Instant::now();
    let out = std::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            &to,
        ])
        .args(&systems)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nix_copy = started.elapsed();
    // yeet publish of the 20 hosts (5 distinct systems) to the embedded cache.
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, systems[i % 5].as_str()))
        .collect();
    let started = Instant::now();
    fleet.publish(&pairs, "bench");
    let yeet = started.elapsed();
    println!("20 hosts, 5 distinct systems, {closure_paths} store paths in their closures");
    println!(
        "nix copy --to file:// (signed): {:.2} s",
        nix_copy.as_secs_f64()
    );
    println!(
        "yeet publish (embedded cache, signed, release created): {:.2} s",
        yeet.as_secs_f64()
    );
    println!(
        "ratio yeet/nix-copy: {:.2}",
        yeet.as_secs_f64() / nix_copy.as_secs_f64()
    );
}

fn main() {
    fleet_sim::set_quiet(true);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("latency") => latency(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50)),
        Some("idle") => idle(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(600)),
        Some("publish") => publish(),
        _ => eprintln!("usage: yeet-bench latency [HOSTS] | idle [SECONDS] | publish"),
    }
}
