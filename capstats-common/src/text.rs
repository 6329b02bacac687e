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

/// The longest error message the daemon sends, in bytes: a message may quote a
/// client's request, which may be up to 64 KiB of the worst characters to quote.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A message for people: [`printable`], and cut in the middle when longer than
/// [`MAX_MESSAGE_BYTES`], so that both its start (what was refused) and its end (often
/// why: libpcap's verdict after a quoted expression) are kept.
pub fn bounded(message: &str) -> String {
    let text = printable(message);
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.into_owned();
    }
    let head = text.floor_char_boundary(600);
    let tail = text.ceil_char_boundary(text.len() - 380);
    format!(
        "{} … [{} bytes cut] … {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
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

    #[test]
    fn long_messages_keep_their_start_and_end() {
        assert_eq!(bounded("short\n"), "short\\n");
        let long = format!(
            "invalid filter \"{}\": syntax error",
            "é\u{7f}".repeat(20_000)
        );
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.starts_with("invalid filter \"é\\u{7f}"), "{cut}");
        assert!(cut.ends_with("\": syntax error"), "{cut}");
        assert!(cut.contains(" bytes cut] … "), "{cut}");
    }
}
