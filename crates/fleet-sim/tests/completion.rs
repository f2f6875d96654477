//! Shell completion as bash runs it: the script `yeet completions bash` prints, sourced in a
//! real bash, completes subcommands and, where a host is expected, the fleet's host names
//! from the list `yeet status` remembered, without asking the server.

#![allow(clippy::unwrap_used)]

use fleet_sim::sim::Fleet;
use std::process::Command;

/// What bash offers for the command line `words` (the last one being completed).
fn complete(home: &std::path::Path, server: &str, words: &[&str]) -> Vec<String> {
    let script = format!(
        r#"source <(yeet completions bash)
COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_TYPE=9
_clap_complete_yeet yeet "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1
    );
    let out = fleet_sim::run(
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .env("YEET_SERVER", server)
            .env_remove("XDG_CACHE_HOME")
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    fleet_sim::bin_dir().display(),
                    std::env::var("PATH").unwrap()
                ),
            ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completes_subcommands_and_the_fleets_host_names_offline() {
    let fleet = Fleet::new(&["web-1", "web-2", "db-1"], 30);
    let home = fleet.server.dir.path();
    // Nothing remembered yet: no host names, and no error either.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let never_asked = format!("http://{}", silent.local_addr().unwrap());
    let offered = complete(home, &never_asked, &["yeet", "log", ""]);
    assert!(!offered.iter().any(|c| c.starts_with("web")), "{offered:?}");
    // `yeet status` remembers the fleet.
    fleet.server.yeet(&["status"]);
    assert_eq!(
        complete(home, &never_asked, &["yeet", "log", "we"]),
        ["web-1", "web-2"]
    );
    assert_eq!(
        complete(
            home,
            &never_asked,
            &["yeet", "secret", "revoke", "token", "d"]
        ),
        ["db-1"]
    );
    assert!(complete(home, &never_asked, &["yeet", "st"]).contains(&"status".to_owned()));
    // Completing never reached the server it was pointed at.
    silent.set_nonblocking(true).unwrap();
    assert!(silent.accept().is_err(), "a completion asked the server");
}
