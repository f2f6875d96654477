//! The README's demo: a yeet server on its embedded defaults, three simulated NixOS hosts
//! with real Nix (each in its own mount and PID namespaces), enrollment by code, a release
//! that every host switches to and confirms, then a broken release that rolls back.
//! Everything lives in temporary directories and on loopback, and is removed at the end.

#![allow(clippy::unwrap_used)]

use fleet_sim::sim::{Fleet, Variant, wait_until};
use std::time::{Duration, Instant};

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// The verification code a waiting host shows (`yeet-agent status`), said aloud.
fn shown_code(host: &fleet_sim::sim::SimHost) -> String {
    let code = host.shown_code(Duration::from_secs(60));
    println!(
        "{} shows (yeet-agent status): verification code {code}",
        host.name
    );
    code
}

fn main() {
    let started = Instant::now();
    fleet_sim::set_quiet(true);
    step(
        "1. a yeet server on its defaults (SQLite, loopback), a signed binary cache, an admin key",
    );
    let mut fleet = Fleet::new(&[], 15);
    println!(
        "server at {}; cache {} signed by {}",
        fleet.server.url,
        fleet.cache.url(),
        fleet.cache.public_key
    );

    step("2. three hosts boot (each its own /nix, /run, /etc/yeet, /var/lib/yeet) and register");
    let names = ["web-1", "web-2", "db-1"];
    let hosts: Vec<_> = names.iter().map(|n| fleet.boot_new_host(n)).collect();
    let codes: Vec<String> = hosts.iter().map(shown_code).collect();
    print!("{}", fleet.server.yeet(&["pending"]));

    step("3. the admin approves each host by the code it shows");
    for (host, code) in hosts.iter().zip(&codes) {
        print!(
            "$ yeet approve {} {code}\n{}",
            host.name,
            fleet.server.yeet(&["approve", &host.name, code])
        );
    }
    fleet.hosts.extend(hosts);

    step(
        "4. real Nix builds a web and a db system; they are pushed, signed, to the cache; a release names them",
    );
    let web = fleet.system("nixos-system-web", Variant::Good, "6.1");
    let db = fleet.system("nixos-system-db", Variant::Good, "6.1");
    fleet.publish(
        &[("web-1", &web), ("web-2", &web), ("db-1", &db)],
        "v1: web and db",
    );
    print!("{}", fleet.server.yeet(&["releases"]));

    step("5. every host fetches, verifies, switches (which restarts its agent) and confirms");
    wait_until(
        Duration::from_secs(180),
        "the fleet to converge on v1",
        || {
            let s = fleet.status();
            names.iter().all(|n| {
                s[*n]["state"] == "standby" && s[*n]["current_system"] == s[*n]["desired_system"]
            })
        },
    );
    print!("{}", fleet.server.yeet(&["status"]));

    step("6. a broken release for web-2: its switch fails, so it rolls back to v1 on its own");
    let broken = fleet.system("nixos-system-web-broken", Variant::Fail, "6.1");
    fleet.publish(&[("web-2", &broken)], "v2: breaks web-2");
    fleet.wait_for_activation("web-2", 2, Duration::from_secs(180));
    print!(
        "$ yeet history web-2\n{}",
        fleet.server.yeet(&["history", "web-2"])
    );
    print!("$ yeet log web-2\n{}", fleet.server.yeet(&["log", "web-2"]));

    step("7. the fleet status: web-2 rolled back and stays on its working system");
    print!("{}", fleet.server.yeet(&["status"]));
    println!("\ndemo finished in {:.0?}; cleaning up", started.elapsed());
}
