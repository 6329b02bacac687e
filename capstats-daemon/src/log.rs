//! Logging: one line per event on stderr, with a UTC timestamp, so that journald,
//! a terminal and `grep` all read it.
//!
//! Messages carry text from clients (filters, which libpcap lets span lines) and from
//! the kernel (verifier logs): control characters are escaped, so that one event is
//! one line and nobody can forge a log line or send escape sequences to the
//! administrator's terminal.

/// Writes one log line: `2026-11-26T03:20:00Z capstats: <message>`.
macro_rules! event {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
pub(crate) use event;

pub fn line(message: std::fmt::Arguments<'_>) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    // A message may quote a client (a filter may hold a newline): escaped, it cannot
    // forge a line of its own or reach the terminal of whoever reads the log; cut to
    // 1 KiB (start and end kept), a 64 KiB expression does not flood it either.
    let message = capstats_common::text::bounded(&message.to_string());
    // One write per line, so that lines from threads do not interleave.
    let text = format!("{now} capstats: {}\n", one_line(&message.to_string()));
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), tabs kept.
fn one_line(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.to_owned();
    }
    text.chars()
        .map(|c| match c {
            '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_is_one_line_without_escape_sequences() {
        assert_eq!(one_line("new session \"a\": udp"), "new session \"a\": udp");
        assert_eq!(
            one_line("udp or\n2026-11-26T00:00:00Z capstats: forged\r\u{1b}[2J\tx"),
            "udp or\\n2026-11-26T00:00:00Z capstats: forged\\r\\u{1b}[2J\tx"
        );
    }
}
