//! Logging: one line per event on stderr, with a UTC timestamp, so that journald,
//! a terminal and `grep` all read it.

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
    let text = format!("{now} capstats: {message}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
}
