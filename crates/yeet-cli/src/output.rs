//! Output for people: tables, short store paths and relative times. `--json` bypasses all of it.

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;
use yeet_proto::api::{HostPolicy, RebootPolicy};

pub use yeet_proto::clock::ago;

/// `/nix/store/<hash>-<name>` → `<first 7 of hash>…-<name>`; anything else unchanged.
pub fn short_path(p: Option<&str>) -> String {
    match p.map(|p| (p, p.parse::<nix_meta::StorePath>())) {
        None => "-".into(),
        Some((_, Ok(sp))) => format!("{}…-{}", &sp.hash_part()[..7], sp.name()),
        Some((raw, Err(_))) => raw.to_owned(),
    }
}

pub fn table<'a>(header: impl IntoIterator<Item = &'a str>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.into_iter().collect::<Vec<_>>());
    t
}

/// One host, field by field, with full store paths.
/// Tags as a table cell: `prod, eu`, or `-`.
pub fn tag_list(tags: &[String]) -> String {
    if tags.is_empty() {
        "-".to_owned()
    } else {
        tags.join(", ")
    }
}

/// What a host may do on its own, in a sentence (`yeet host policy`).
pub fn host_policy(p: &HostPolicy) -> String {
    let may = if p.allow_detach { "may" } else { "may not" };
    format!(
        "people at the host {may} detach it; it reboots by itself: {}",
        reboot_policy(p)
    )
}

/// When a host reboots by itself, and whose word that is.
pub fn reboot_policy(p: &HostPolicy) -> String {
    let when = match p.effective_reboot() {
        RebootPolicy::Never => "never",
        RebootPolicy::InWindow => "inside its maintenance window",
    };
    match p.declared_reboot {
        Some(_) => format!("{when} (declared by the host's agent config)"),
        None => when.to_owned(),
    }
}

pub fn host_detail(h: &yeet_proto::api::HostInfo) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (field, value) in [
        ("host", h.name.clone()),
        ("state", h.state.as_str().to_owned()),
        ("key", h.key_id.clone()),
        ("tags", tag_list(&h.tags)),
        ("suggests tags", tag_list(&h.facts.suggested_tags)),
        ("current system", or_dash(h.current_system.clone())),
        ("desired system", or_dash(h.desired_system.clone())),
        (
            "switch waits for",
            h.window_wait.as_ref().map_or_else(
                || "-".to_owned(),
                |w| format!("maintenance window {} ({})", w.window, w.opens),
            ),
        ),
        (
            "desired release",
            or_dash(h.desired_release.map(|r| r.to_string())),
        ),
        (
            "last result",
            h.last_result
                .map(|r| r.as_str().to_owned())
                .unwrap_or_else(|| "-".into()),
        ),
        ("last seen", ago(h.last_seen)),
        (
            "detached",
            h.detached.as_ref().map_or_else(
                || "no".to_owned(),
                |d| format!("since {} by {}: {}", ago(Some(d.since)), d.user, d.reason),
            ),
        ),
        (
            "may detach",
            if h.policy.allow_detach { "yes" } else { "no" }.to_owned(),
        ),
        ("reboots", reboot_policy(&h.policy)),
        ("approved", ago(Some(h.approved_at))),
        ("os/arch", format!("{}/{}", h.facts.os, h.facts.arch)),
        (
            "os version",
            or_dash(Some(h.facts.os_version.clone()).filter(|v| !v.is_empty())),
        ),
        (
            "kernel",
            or_dash(Some(h.facts.kernel.clone()).filter(|v| !v.is_empty())),
        ),
        (
            "booted",
            h.facts.booted_at.map_or_else(
                || "-".to_owned(),
                |t| {
                    format!(
                        "{} (up {})",
                        yeet_proto::clock::utc_time(t),
                        ago(Some(t)).trim_end_matches(" ago")
                    )
                },
            ),
        ),
        ("agent", h.facts.agent_version.clone()),
    ] {
        t.add_row([field.to_owned(), value]);
    }
    t
}

/// Prints text that carries strings from the server or from hosts (facts, hints, reasons,
/// messages, logs) without control or bidi characters: a hostile host's text must not
/// drive the operator's terminal (escape sequences) or read differently than it is.
pub fn print_clean(text: impl std::fmt::Display) {
    println!(
        "{}",
        yeet_proto::text::clean(&text.to_string(), usize::MAX, true)
    );
}

/// For a listing with nothing in it: says so, and what to do, instead of an empty table.
/// True when it did (the caller prints nothing more).
pub fn said_empty<T>(items: &[T], nothing: &str) -> bool {
    if items.is_empty() {
        println!("{nothing}");
    }
    items.is_empty()
}

/// Prints JSON for scripts. The data stays exact: control characters are already escaped by
/// JSON, and bidi controls (which JSON leaves raw, and which can appear only inside strings)
/// are written as `\uXXXX` escapes too, so a terminal shows the text as it is.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if yeet_proto::text::is_bidi_control(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_store_paths_and_ages() {
        assert_eq!(
            short_path(Some(
                "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-nixos-system-web"
            )),
            "q322pzf…-nixos-system-web"
        );
        assert_eq!(short_path(None), "-");
        assert_eq!(ago(None), "never");
        assert_eq!(ago(Some(yeet_proto::clock::unix_now() - 120)), "2m ago");
    }
}
