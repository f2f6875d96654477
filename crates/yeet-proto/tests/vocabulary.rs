//! One error vocabulary: outside `yeet-proto`, no source file spells a wire error code as a
//! string literal. Servers and clients name codes through `ErrorCode`; tests may spell them,
//! since they pin the wire names.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use yeet_proto::ErrorCode;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_wire_code_is_a_string_literal_outside_the_protocol_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap() {
        let krate = krate.unwrap().path();
        if krate.ends_with("yeet-proto") || !krate.join("src").is_dir() {
            continue;
        }
        rust_files(&krate.join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for code in ErrorCode::ALL {
                let literal = format!("\"{}\"", code.as_str());
                // A JSON key of the same spelling (`"code_expired": false`) is a field name.
                let as_key = format!("{literal}:");
                if line.contains(&literal) && !line.contains(&as_key) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "use yeet_proto::ErrorCode instead of these literals:\n{}",
        found.join("\n")
    );
}
