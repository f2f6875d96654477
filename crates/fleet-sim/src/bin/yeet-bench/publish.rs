//! `yeet-bench publish [MIB] [PATHS] [SMALL]`: publishing speed.
//! - A generated closure of PATHS store paths (default 300) holding MIB MiB (default 1024) of
//!   NARs, sized like a real system (a few large paths, many small ones; two in three hold
//!   binary code taken from this machine's shared libraries, one in three random bytes,
//!   which no compressor shrinks), published with `yeet publish` to the embedded cache,
//!   against `nix copy` of the same closure to a `file://` cache with the same compression
//!   (zstd) and the same signing.
//! - A closure of SMALL tiny paths (default 10,000): its first publish, an unchanged
//!   re-publish (no host changes: nothing to do), and a forced one (`--allow-empty`: the
//!   whole closure is checked against the cache, nothing uploaded).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where the binary corpus is kept between runs, so that generated paths are reused.
const CORPUS: &str = "/var/tmp/yeet-bench-corpus";
const CORPUS_MIB: u64 = 256;

fn run_ok(cmd: &mut Command) -> String {
    let out = fleet_sim::run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Concatenated shared libraries: content that compresses like a real system's binaries.
fn binary_corpus() -> PathBuf {
    let corpus = PathBuf::from(CORPUS);
    if std::fs::metadata(&corpus).is_ok_and(|m| m.len() == CORPUS_MIB << 20) {
        return corpus;
    }
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "find /usr/lib /usr/bin -type f -size +100k \\( -name '*.so*' -o -perm -u+x \\) | sort | xargs cat 2>/dev/null | head -c {} > {CORPUS}.tmp && mv {CORPUS}.tmp {CORPUS}",
        CORPUS_MIB << 20
    )));
    assert_eq!(
        std::fs::metadata(&corpus).unwrap().len(),
        CORPUS_MIB << 20,
        "not enough binaries on this machine for the corpus"
    );
    corpus
}

/// Sizes in 64 KiB blocks that add up to about `mib` MiB over `paths` paths, falling off
/// like a real closure's (the i-th largest about 1/i of the largest).
fn part_blocks(mib: u64, paths: usize) -> Vec<u64> {
    let harmonic: f64 = (1..=paths).map(|i| 1.0 / i as f64).sum();
    let total_blocks = (mib * 16) as f64;
    (1..=paths)
        .map(|i| ((total_blocks / harmonic / i as f64).round() as u64).clamp(1, CORPUS_MIB * 16))
        .collect()
}

/// A Nix expression whose output references every generated part, so its closure is them.
fn closure_expression(mib: u64, paths: usize, small: usize, corpus: &Path) -> String {
    let mut parts = String::new();
    for (i, blocks) in part_blocks(mib, paths).iter().enumerate() {
        let fill = if i % 3 == 2 {
            format!("head -c {} /dev/urandom", blocks * 65536)
        } else {
            let skip = (i as u64 * 97) % (CORPUS_MIB * 16 - blocks + 1);
            format!(
                "dd if={} bs=64K skip={skip} count={blocks} status=none",
                corpus.display()
            )
        };
        parts.push_str(&format!("  (part \"{i}\" \"{fill} > $out/data\")\n"));
    }
    format!(
        r#"let
  part = name: script: derivation {{
    name = "bench-part-${{name}}"; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/bin:/usr/bin"; args = [ "-c" "mkdir $out && ${{script}}" ];
  }};
  small = builtins.genList (i: builtins.toFile "bench-small-${{toString i}}" "small path ${{toString i}}\n") {small};
  top = name: deps: derivation {{
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin";
    paths = builtins.concatStringsSep "\n" (map toString deps); passAsFile = [ "paths" ];
    args = [ "-c" "cat $pathsPath > $out" ];
  }};
in {{
  large = top "bench-closure" [
{parts}  ];
  small = top "bench-small-closure" small;
}}
"#
    )
}

/// Builds both closures; returns their top paths.
fn generate(mib: u64, paths: usize, small: usize, dir: &Path) -> (String, String) {
    let corpus = binary_corpus();
    let expr = dir.join("closure.nix");
    std::fs::write(&expr, closure_expression(mib, paths, small, &corpus)).unwrap();
    let out = run_ok(Command::new("nix-build").arg(&expr).args([
        "--no-out-link",
        "--max-jobs",
        "2",
        "-A",
        "large",
        "-A",
        "small",
    ]));
    let tops: Vec<&str> = out.lines().collect();
    (tops[0].to_owned(), tops[1].to_owned())
}

fn nar_mib(top: &str) -> (usize, f64) {
    let out = run_ok(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "-rS",
        top,
    ]));
    let closure_size = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    let count = run_ok(Command::new("nix-store").args(["-qR", top]))
        .lines()
        .count();
    (count, closure_size / (1 << 20) as f64)
}

/// Seconds `nix copy` of `top`'s closure to a `file://` cache at `target` takes, with the
/// embedded cache's compression (zstd) and signed with `key`, as a publish signs.
fn time_nix_copy(top: &str, target: &Path, key: &Path, core: Option<usize>) -> f64 {
    let to = format!(
        "file://{}?compression=zstd&secret-key={}",
        target.display(),
        key.display()
    );
    let started = Instant::now();
    run_ok(pinned(Command::new("nix"), core).args([
        "--extra-experimental-features",
        "nix-command",
        "copy",
        "--to",
        &to,
        top,
    ]));
    started.elapsed().as_secs_f64()
}

/// Seconds `yeet publish --path HOST=TOP EXTRA...` takes (on CPU `core` alone, with the
/// Nix processes it starts, if given); asserts it succeeded.
fn time_publish(
    server: &fleet_sim::Server,
    host: &str,
    top: &str,
    extra: &[&str],
    core: Option<usize>,
) -> f64 {
    let started = Instant::now();
    let pair = format!("{host}={top}");
    let yeet = server.yeet_cmd();
    let mut cmd = pinned(Command::new(yeet.get_program()), core);
    for (name, value) in yeet.get_envs() {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    run_ok(cmd.args(["publish", "--path", &pair]).args(extra));
    started.elapsed().as_secs_f64()
}

/// `program`, run by `taskset` on CPU `core` alone (its children inherit it), if given.
fn pinned(program: Command, core: Option<usize>) -> Command {
    let Some(core) = core else {
        return program;
    };
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &core.to_string()])
        .arg(program.get_program());
    cmd
}

pub fn publish(mib: u64, paths: usize, small: usize) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (large, small_top) = generate(mib, paths, small, dir.path());
    let generated = started.elapsed().as_secs_f64();
    let (key, server) = signing_server(dir.path());
    for host in ["bench-1", "bench-2", "bench-3"] {
        server.approved_host(host);
    }
    let key_arg = key.display().to_string();
    let signed = ["--signing-key", key_arg.as_str()];

    let (count, nar) = nar_mib(&large);
    let nix_copy = time_nix_copy(&large, &dir.path().join("nix-copy"), &key, None);
    let yeet = time_publish(&server, "bench-1", &large, &signed, None);
    println!(
        "generated closure: {count} paths, {nar:.0} MiB of NARs ({generated:.1} s to generate or find)"
    );
    println!("nix copy --to file://…?compression=zstd (signed): {nix_copy:>7.2} s");
    println!("yeet publish (embedded cache, zstd, signed):      {yeet:>7.2} s");
    println!("ratio yeet/nix-copy: {:.2}", yeet / nix_copy);

    let (small_count, _) = nar_mib(&small_top);
    let first = time_publish(&server, "bench-2", &small_top, &signed, None);
    let unchanged = time_publish(&server, "bench-2", &small_top, &signed, None);
    let forced = time_publish(&server, "bench-3", &small_top, &signed, None);
    println!("closure of {small_count} small paths:");
    println!("  first publish:                                  {first:>9.3} s");
    println!("  unchanged re-publish (no host changes):         {unchanged:>9.3} s");
    println!("  to another host (all checked, none uploaded):   {forced:>9.3} s");
}

/// A signing key in `dir` (`cache-key`, `cache-key.pub`) and a server that requires it.
fn signing_server(dir: &Path) -> (PathBuf, fleet_sim::Server) {
    let key = dir.join("cache-key");
    run_ok(
        Command::new("nix-store")
            .args(["--generate-binary-cache-key", "bench-1"])
            .arg(&key)
            .arg(dir.join("cache-key.pub")),
    );
    let public = std::fs::read_to_string(dir.join("cache-key.pub")).unwrap();
    let server = fleet_sim::Server::start(fleet_sim::ServerOptions {
        config: format!("trusted_cache_keys = [\"{}\"]\n", public.trim()),
        ..Default::default()
    });
    (key, server)
}

/// The fixed cost of a publish, with data no compressor shrinks: for each size, `paths`
/// paths of it published to a fresh embedded cache against `nix copy` of the same closure
/// to a fresh `file://` cache (zstd, signed); medians of 3 rounds, each on a new closure.
/// With `split`, the server runs on CPU 1 and the publisher (or `nix copy`) on CPU 0, as if
/// they were two machines: what a publish costs the machine that runs it.
pub fn publish_random(paths: usize, sizes: Vec<f64>, split: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (key, server) = signing_server(dir.path());
    let client_core = split.then_some(0);
    if split {
        // -a: every thread the server has; those it starts later inherit the CPU.
        run_ok(
            Command::new("taskset")
                .args(["-a", "-p", "-c", "1"])
                .arg(server.proc.child.id().to_string()),
        );
    }
    let hosts: Vec<String> = (0..sizes.len() * 3).map(|i| format!("bench-{i}")).collect();
    for host in &hosts {
        server.approved_host(host);
    }
    let key_arg = key.display().to_string();
    let mut hosts = hosts.iter();
    for mib in sizes {
        let (mut copies, mut publishes) = (Vec::new(), Vec::new());
        for round in 0..3 {
            let salt = format!("{}-{round}", dir.path().display());
            let top = fleet_sim::random_closure(
                paths,
                (mib * (1 << 20) as f64) as u64,
                &salt,
                dir.path(),
            );
            let target = dir.path().join(format!("copy-{mib}-{round}"));
            copies.push(time_nix_copy(&top, &target, &key, client_core));
            let host = hosts.next().unwrap();
            publishes.push(time_publish(
                &server,
                host,
                &top,
                &["--signing-key", &key_arg],
                client_core,
            ));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (copy, publish) = (median(&mut copies), median(&mut publishes));
        let cores = if split {
            " (publisher on CPU 0, server on CPU 1)"
        } else {
            ""
        };
        println!(
            "{paths} paths of {mib} MiB random{cores}: nix copy {copy:.2} s, yeet publish {publish:.2} s, ratio {:.2}",
            publish / copy
        );
    }
}
