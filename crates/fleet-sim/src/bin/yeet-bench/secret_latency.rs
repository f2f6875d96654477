//! `yeet-bench secret-latency [ROUNDS] [INTERVAL]`: how long a secret change takes to reach a
//! real agent on a namespace host, with the server's check-in interval at INTERVAL seconds
//! (default 30, the server's default). ROUNDS rotations follow each other as soon as the
//! previous one has arrived, then the secret is revoked. Before an early-answered check-in
//! re-polled at once, every rotation after the first waited out most of the interval.

use fleet_sim::sim::{Fleet, FleetOptions};
use std::time::Duration;

pub fn secret_latency(rounds: usize, interval: u64) {
    let fleet = Fleet::with(
        &["bench-1"],
        FleetOptions {
            server_config: format!("checkin_interval_secs = {interval}\n"),
            ..Default::default()
        },
    );
    fleet.add_secret("bench-secret", "first", "bench-1");
    let system = fleet.system_with_secrets("bench-secret-system", "{ bench-secret = { }; }");
    fleet.publish(&[("bench-1", &system)], "a system with a secret");
    fleet.wait_for_activation("bench-1", 1, Duration::from_secs(300));
    // A change may wait out a whole interval (the old behaviour), and then some.
    let within = Duration::from_secs(interval * 2 + 30);
    let (mut rotations, revocation) =
        fleet.secret_change_latencies("bench-1", "bench-secret", rounds, within);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let first = rotations.first().copied().unwrap_or_default();
    rotations.sort();
    println!("check-in interval {interval} s, {rounds} rotations in a row, then a revocation");
    println!(
        "rotation: first {:.0} ms, p50 {:.0} ms, max {:.0} ms",
        ms(first),
        ms(rotations[rotations.len() / 2]),
        ms(rotations[rotations.len() - 1]),
    );
    println!("revocation: {:.0} ms", ms(revocation));
    println!(
        "ratio max-rotation/interval: {:.3}",
        rotations[rotations.len() - 1].as_secs_f64() / interval as f64
    );
}
