//! nix-meta against real Nix: we must read the narinfo files `nix copy` writes, and Nix must
//! accept what we sign and reject what was tampered with. Needs `nix-bin` (the README's test
//! command installs it); a missing `nix` fails these tests rather than skipping them.

#![allow(clippy::unwrap_used)]

use nix_meta::{NarInfo, PublicKey, SecretKey, StorePath};
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is nix-bin installed?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn nix() -> Command {
    let mut c = Command::new("nix");
    c.args(["--extra-experimental-features", "nix-command"]);
    c
}

/// Builds a two-derivation closure unique to this test run; returns the top path.
fn build_closure(dir: &Path, tag: &str) -> String {
    let expr = dir.join("sys.nix");
    std::fs::write(
        &expr,
        format!(
            r#"let dep = derivation {{ name = "nix-meta-dep-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = ["-c" "echo dep > $out"]; }};
            in derivation {{ name = "nix-meta-top-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = ["-c" "mkdir $out; ln -s ${{dep}} $out/dep"]; }}"#
        ),
    )
    .unwrap();
    let out = Command::new("nix-build")
        .arg(&expr)
        .arg("--no-out-link")
        .output()
        .expect("nix-build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn unique_tag() -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn generate_nix_key(dir: &Path, name: &str) -> (SecretKey, PublicKey) {
    let (sk, pk) = (
        dir.join(format!("{name}.sk")),
        dir.join(format!("{name}.pk")),
    );
    let (ok, text) = run(Command::new("nix-store")
        .arg("--generate-binary-cache-key")
        .arg(name)
        .arg(&sk)
        .arg(&pk));
    assert!(ok, "{text}");
    (
        std::fs::read_to_string(sk).unwrap().parse().unwrap(),
        std::fs::read_to_string(pk).unwrap().parse().unwrap(),
    )
}

fn narinfo_path(cache: &Path, store_path: &str) -> std::path::PathBuf {
    let sp: StorePath = store_path.parse().unwrap();
    cache.join(format!("{}.narinfo", sp.hash_part()))
}

/// `nix copy --from cache` into a fresh chroot store that trusts only `trusted`.
fn copy_from(cache: &Path, dest: &Path, trusted: &PublicKey, path: &str) -> (bool, String) {
    run(nix()
        .arg("copy")
        .arg("--from")
        .arg(format!("file://{}", cache.display()))
        .arg("--to")
        .arg(dest)
        .args(["--option", "trusted-public-keys", &trusted.to_string()])
        .arg(path))
}

#[test]
fn we_verify_what_nix_signs() {
    let dir = tempfile::tempdir().unwrap();
    let top = build_closure(dir.path(), &unique_tag());
    let (sk, pk) = generate_nix_key(dir.path(), "fleet-1");
    let cache = dir.path().join("cache");
    let sk_file = dir.path().join("fleet-1.sk");
    let (ok, text) = run(nix()
        .arg("copy")
        .arg("--to")
        .arg(format!(
            "file://{}?secret-key={}",
            cache.display(),
            sk_file.display()
        ))
        .arg(&top));
    assert!(ok, "{text}");

    let mut seen = 0;
    for entry in std::fs::read_dir(&cache).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&p).unwrap();
            let ni = NarInfo::parse(&text).unwrap();
            assert_eq!(ni.to_text(), text, "serialisation differs from Nix's");
            assert_eq!(
                ni.verify(std::slice::from_ref(&pk)).unwrap().name,
                "fleet-1"
            );
            let stranger = SecretKey::from_seed("stranger-1", &[3; 32]).public();
            assert!(ni.verify(&[stranger]).is_err());
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "expected the top path and its dependency");
    let ni = NarInfo::parse(&std::fs::read_to_string(narinfo_path(&cache, &top)).unwrap()).unwrap();
    assert_eq!(ni.references.len(), 1);
    drop(sk);
}

#[test]
fn nix_trusts_what_we_sign_and_rejects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let top = build_closure(dir.path(), &unique_tag());
    let cache = dir.path().join("cache");
    let (ok, text) = run(nix()
        .arg("copy")
        .arg("--to")
        .arg(format!("file://{}", cache.display()))
        .arg(&top));
    assert!(ok, "{text}");

    // Our key, from our own seed: Nix has never seen it.
    let key = SecretKey::from_seed("ours-1", &[9; 32]);
    for entry in std::fs::read_dir(&cache).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "narinfo") {
            let mut ni = NarInfo::parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
            assert!(ni.sigs.is_empty());
            ni.sign(&key);
            std::fs::write(&p, ni.to_text()).unwrap();
        }
    }

    // Unsigned-by-trusted: a key Nix trusts that did not sign is refused.
    let other = SecretKey::from_seed("ours-2", &[8; 32]).public();
    let (ok, text) = copy_from(&cache, &dir.path().join("store-untrusted"), &other, &top);
    assert!(!ok && text.contains("signature"), "{text}");

    let (ok, text) = copy_from(&cache, &dir.path().join("store-ok"), &key.public(), &top);
    assert!(ok, "nix refused our signature: {text}");

    // Tamper with the signed fields of the top narinfo: Nix must refuse it.
    let top_info = narinfo_path(&cache, &top);
    let original = std::fs::read_to_string(&top_info).unwrap();
    let mut ni = NarInfo::parse(&original).unwrap();
    ni.nar_size += 1;
    std::fs::write(&top_info, ni.to_text()).unwrap();
    let (ok, text) = copy_from(
        &cache,
        &dir.path().join("store-tampered"),
        &key.public(),
        &top,
    );
    assert!(
        !ok && text.contains("signature"),
        "nix accepted a tampered narinfo: {text}"
    );
    assert!(ni.verify(&[key.public()]).is_err());
}

/// The host's check: what a real store registers and the signatures `nix store sign` adds
/// there verify with our code, from the store's own metadata (no narinfo involved).
#[test]
fn we_verify_a_stores_own_registrations_and_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let top = build_closure(dir.path(), &unique_tag());
    let (_, pk) = generate_nix_key(dir.path(), "fleet-1");
    let store = dir.path().join("store");
    let (ok, text) = run(nix()
        .args(["copy", "--no-check-sigs", "--to"])
        .arg(&store)
        .arg(&top));
    assert!(ok, "{text}");
    let facts = |store: &Path| {
        let out = Command::new("nix-store")
            .arg("--store")
            .arg(store)
            .args(["--query", "--requisites", &top])
            .output()
            .unwrap();
        let closure: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let dump = Command::new("nix-store")
            .arg("--store")
            .arg(store)
            .arg("--dump-db")
            .args(&closure)
            .output()
            .unwrap();
        let json = nix()
            .arg("--store")
            .arg(store)
            .args(["path-info", "--json", "--recursive", &top])
            .output()
            .unwrap();
        let mut infos = nix_meta::path_info::parse_registrations(
            "/nix/store",
            &String::from_utf8_lossy(&dump.stdout),
        )
        .unwrap();
        let sigs = nix_meta::path_info::parse_signatures(
            "/nix/store",
            &String::from_utf8_lossy(&json.stdout),
        )
        .unwrap();
        for info in &mut infos {
            info.sigs = sigs.get(&info.store_path).cloned().unwrap_or_default();
        }
        assert_eq!(infos.len(), 2, "expected the top path and its dependency");
        infos
    };
    for info in facts(&store) {
        assert!(
            matches!(
                info.verify(std::slice::from_ref(&pk)),
                Err(nix_meta::VerifyError::Unsigned { .. })
            ),
            "{info:?}"
        );
    }
    let (ok, text) = run(nix()
        .arg("--store")
        .arg(&store)
        .args(["store", "sign", "--recursive", "--key-file"])
        .arg(dir.path().join("fleet-1.sk"))
        .arg(&top));
    assert!(ok, "{text}");
    let stranger = SecretKey::from_seed("stranger-1", &[3; 32]).public();
    for info in facts(&store) {
        assert_eq!(
            info.verify(std::slice::from_ref(&pk)).unwrap().name,
            "fleet-1"
        );
        assert!(info.verify(std::slice::from_ref(&stranger)).is_err());
    }
}

/// `nix-store --export` of a tree with every kind of NAR node: each NAR we cut out of the
/// stream is byte for byte what `nix-store --dump` writes, and each trailer names the path
/// and its references as the store does. A cut-off stream is an error, not a panic.
#[test]
fn we_read_what_nix_store_export_writes() {
    let dir = tempfile::tempdir().unwrap();
    let tag = unique_tag();
    let expr = dir.path().join("tree.nix");
    std::fs::write(
        &expr,
        format!(
            r#"let dep = derivation {{ name = "nix-meta-export-dep-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = ["-c" "echo -n 1234567 > $out"]; }};
            in derivation {{ name = "nix-meta-export-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin";
                 args = ["-c" "mkdir -p $out/a/b/c $out/empty-dir; touch $out/empty; printf '#!/bin/sh\\n' > $out/run; chmod +x $out/run; head -c 100000 /dev/urandom > $out/a/b/c/data; ln -s ${{dep}} $out/dep; ln -s run $out/a/link"]; }}"#
        ),
    )
    .unwrap();
    let stdout = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let top = stdout(Command::new("nix-build").arg(&expr).arg("--no-out-link"));
    let closure = stdout(Command::new("nix-store").args(["-qR", top.trim()]));
    let closure: Vec<&str> = closure.lines().collect();
    assert_eq!(closure.len(), 2);
    let export = Command::new("nix-store")
        .arg("--export")
        .args(&closure)
        .output()
        .unwrap();
    assert!(export.status.success());
    let mut reader = nix_meta::export::ExportReader::new(export.stdout.as_slice(), "/nix/store");
    let mut seen = Vec::new();
    loop {
        let mut nar = Vec::new();
        let Some(path) = reader.next_into(&mut nar).unwrap() else {
            break;
        };
        let full = path.store_path.in_store("/nix/store");
        let dump = Command::new("nix-store")
            .args(["--dump", &full])
            .output()
            .unwrap();
        assert!(
            nar == dump.stdout,
            "{full}: the NAR differs from nix-store --dump"
        );
        let refs = stdout(Command::new("nix-store").args(["-q", "--references", &full]));
        let mut want: Vec<&str> = refs.lines().collect();
        let mut got: Vec<String> = path
            .references
            .iter()
            .map(|r| r.in_store("/nix/store"))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{full}");
        seen.push(full);
    }
    seen.sort();
    let mut expected: Vec<String> = closure.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(reader.next_into(&mut Vec::new()).unwrap().is_none());

    for cut in [
        0,
        7,
        8,
        100,
        export.stdout.len() / 2,
        export.stdout.len() - 1,
    ] {
        let mut reader = nix_meta::export::ExportReader::new(&export.stdout[..cut], "/nix/store");
        let mut sink = Vec::new();
        let outcome = (|| {
            while reader.next_into(&mut sink)?.is_some() {}
            Ok::<(), nix_meta::export::ExportError>(())
        })();
        assert!(outcome.is_err(), "a stream cut at {cut} bytes was accepted");
    }
}
