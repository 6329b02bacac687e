//! Text from clients shown to people: in the daemon's log, in error messages, in the
//! client's tables. A filter may hold a newline (libpcap reads it as a space), and a
//! refusal may quote whatever a client sent; shown raw, a newline would forge a log
//! line and an escape sequence would drive the reader's terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` would act on a terminal or a log rather than show: control characters
/// (C0, DEL, C1) and the bidirectional overrides that reorder what follows them.
fn acts(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character and bidirectional override escaped as Rust
/// writes it (`\n`, `\t`, `\u{1b}`); borrowed when there is none, which is the usual case.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(
            printable("tcp port 80 é 名前 🦀"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable("udp\nand\ttcp\r"), "udp\\nand\\ttcp\\r");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("a\u{7f}\u{85}b"), "a\\u{7f}\\u{85}b");
        assert_eq!(printable("x\u{202e}y\u{2066}"), "x\\u{202e}y\\u{2066}");
        assert_eq!(printable("\0"), "\\u{0}");
    }
}
