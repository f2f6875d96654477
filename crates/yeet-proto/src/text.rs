//! Free text that crosses a trust boundary: host facts, registration hints, activation
//! reasons, release messages. It ends up in operators' terminals and browsers, so it is
//! cut to a length and stripped of control characters (ESC sequences can rewrite a
//! terminal or, with OSC 52, its clipboard) and of bidirectional overrides (which make text
//! read differently from what it is). The server cleans on input; clients clean again on
//! output, since they may talk to an older or hostile server.

/// Characters that reorder how text is displayed (Unicode bidi controls).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` without control or bidi characters, at most `max_chars` characters long.
/// Newlines and tabs are kept when `multiline`: reasons and logs have lines.
pub fn clean(text: &str, max_chars: usize, multiline: bool) -> String {
    text.chars()
        .filter(|&c| {
            !(is_bidi_control(c) || c.is_control() && !(multiline && (c == '\n' || c == '\t')))
        })
        .take(max_chars)
        .collect()
}

/// One-line free text (names, hints, facts, messages).
pub fn clean_line(text: &str, max_chars: usize) -> String {
    clean(text, max_chars, false)
}

/// A duration as people write it: `90s`, `10m`, `1h30m`.
pub fn show_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Parses `90`, `90s`, `10m`, `1h`, `1h30m`: whole seconds, minutes, hours.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("{text:?} is no duration; write e.g. 90s, 10m or 1h");
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(invalid()),
        };
        let n: u64 = digits.parse().map_err(|_| invalid())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(invalid)?;
        digits.clear();
    }
    if !digits.is_empty() {
        let n: u64 = digits.parse().map_err(|_| invalid())?;
        total = total.checked_add(n).ok_or_else(invalid)?;
    }
    if text.trim().is_empty() {
        return Err(invalid());
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2m5s", 125),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(std::time::Duration::from_secs(secs)),
                "{text}"
            );
            assert_eq!(
                parse_duration(&show_duration(std::time::Duration::from_secs(secs))),
                Ok(std::time::Duration::from_secs(secs))
            );
        }
        for bad in ["", "ten", "5d", "m", "99999999999999999999h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn escapes_and_overrides_are_removed() {
        assert_eq!(
            clean_line("ok\u{1b}]52;c;ZXZpbA==\u{7}", 100),
            "ok]52;c;ZXZpbA=="
        );
        assert_eq!(clean_line("abc\u{202e}fed", 100), "abcfed");
        assert_eq!(clean_line("a\nb\tc", 100), "abc");
        assert_eq!(clean("a\nb\tc\r", 100, true), "a\nb\tc");
        assert_eq!(clean_line(&"x".repeat(500), 64).len(), 64);
        assert_eq!(clean_line("héllo wörld", 100), "héllo wörld");
    }

    proptest! {
        #[test]
        fn cleaned_text_is_printable_and_bounded(s in "\\PC*|[\\x00-\\x1f\\u{202a}-\\u{202e}a-z]*", max in 0usize..100) {
            let c = clean_line(&s, max);
            prop_assert!(c.chars().count() <= max);
            prop_assert!(c.chars().all(|ch| !ch.is_control() && !is_bidi_control(ch)));
        }
    }
}

/// An error and its causes on one line, each said once: `outer: cause: root`. A cause whose
/// text the line already holds is left out, since many errors repeat their source in
/// their own message ("cannot read key file K: No such file" caused by "No such file").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let root = Layer("No such file or directory (os error 2)".into(), None);
        let repeating = Layer(
            "cannot read key file /k: No such file or directory (os error 2)".into(),
            Some(Box::new(root)),
        );
        let outer = Layer("loading the config".into(), Some(Box::new(repeating)));
        assert_eq!(
            error_chain(&outer),
            "loading the config: cannot read key file /k: No such file or directory (os error 2)"
        );
        let plain = Layer("outer".into(), Some(Box::new(Layer("inner".into(), None))));
        assert_eq!(error_chain(&plain), "outer: inner");
    }
}
