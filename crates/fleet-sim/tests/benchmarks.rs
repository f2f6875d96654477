//! A smoke run of every `yeet-bench` benchmark with tiny sizes: each still runs end to end
//! and prints its figures. The figures themselves are never asserted (the README's
//! Performance table has them, from release builds at full size).

#![allow(clippy::unwrap_used)]

/// Runs `yeet-bench ARGS`; asserts it succeeded and printed every line in `expect`.
fn smoke(args: &[&str], expect: &[&str]) {
    let out = fleet_sim::run(std::process::Command::new(fleet_sim::bin("yeet-bench")).args(args));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "yeet-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in expect {
        assert!(
            stdout.contains(line),
            "yeet-bench {args:?} printed no {line:?}:\n{stdout}"
        );
    }
}

#[test]
fn publish() {
    smoke(
        &["publish", "4", "6", "30"],
        &[
            "ratio yeet/nix-copy:",
            "closure of 31 small paths",
            "none uploaded",
        ],
    );
}

#[test]
fn publish_random() {
    smoke(
        &["publish-random", "3", "0.01", "split"],
        &["3 paths of 0.01 MiB random (publisher on CPU 0, server on CPU 1): nix copy"],
    );
}

#[test]
fn checkins() {
    smoke(&["checkins", "1", "2"], &["ratio signed/bare:"]);
}

#[test]
fn secrets() {
    smoke(&["secrets", "3", "2"], &["ratio 3/1:"]);
}

#[test]
fn secret_latency() {
    smoke(
        &["secret-latency", "2", "10"],
        &[
            "rotation: first",
            "revocation:",
            "ratio max-rotation/interval:",
        ],
    );
}

#[test]
fn audit() {
    smoke(
        &["audit", "20", "2"],
        &["naming the hosts and systems in the event:", "of its own:"],
    );
    smoke(
        &["audit", "20", "2", "postgres"],
        &["(PostgreSQL, medians of 2)"],
    );
}

#[test]
fn osquery_logs() {
    smoke(&["osquery-logs", "1", "1"], &["gzip/plain"]);
}

#[test]
fn realnix() {
    smoke(
        &["realnix", "2"],
        &[
            "converged",
            "confirm  p50",
            "server's share",
            "transient errors",
        ],
    );
}

#[test]
fn realnix_rollout() {
    smoke(
        &["realnix", "4", "rollout"],
        &[
            "converged",
            "waves (hosts): [1, 1, 1, 1]",
            "wave 4: opened",
            "all      p50",
        ],
    );
}

#[test]
fn hold() {
    smoke(&["hold", "20"], &["per held poll:", "should be 0): 0"]);
}

#[test]
fn fleet() {
    smoke(&["fleet", "20", "2"], &["release-to-wake: 20 of 20 woken"]);
}

#[test]
fn fleet_rollout() {
    smoke(
        &["fleet", "30", "2", "rollout"],
        &["wave 1 (10)", "wave 2 (10)", "wave 3 (10)"],
    );
}

#[test]
fn idle() {
    smoke(&["idle", "5"], &["RSS: start"]);
}
