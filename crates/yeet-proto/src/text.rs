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

#[cfg(test)]
mod tests {
    use super::*;
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
