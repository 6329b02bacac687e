//! `watch NAME frequency SECONDS`: a line per period with the counters and the rates
//! over the period, until Ctrl-C. The rates divide by the time between the daemon's
//! own reads, not by the nominal period.
//!
//! On a terminal each line for people ends with a sparkline of the packet rates of the
//! last [`SPARKLINE_PERIODS`] periods ([`output::sparkline`]); piped or redirected, the
//! lines are plain, as scripts expect.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use capstats_common::protocol::{Command, Reply, Session};

use crate::client::{request, usage};
use crate::output;

/// Periods a sparkline shows.
pub const SPARKLINE_PERIODS: usize = 24;

/// A line of `watch --json`: the session's fields in `show --json`'s order, then the
/// period's.
#[derive(serde::Serialize)]
pub struct JsonLine<'a> {
    #[serde(flatten)]
    pub session: &'a Session,
    pub time: String,
    pub interval: f64,
    pub pps: f64,
    pub bps: f64,
}

/// The columns of `watch` for people: the counters as wide as the widest value printed
/// so far (at least [`MIN_COUNTER_WIDTH`]), so that lines stay aligned as numbers grow;
/// times with milliseconds when the period is below a second.
#[derive(Debug)]
pub struct Columns {
    millis: bool,
    packets: usize,
    bytes: usize,
}

/// The narrowest counter column: `9,999,999`.
pub const MIN_COUNTER_WIDTH: usize = 9;

impl Columns {
    pub fn new(period: Duration) -> Self {
        Self {
            millis: period < Duration::from_secs(1),
            packets: MIN_COUNTER_WIDTH,
            bytes: MIN_COUNTER_WIDTH,
        }
    }

    pub fn time(&self, at: SystemTime) -> String {
        if self.millis {
            humantime::format_rfc3339_millis(at).to_string()
        } else {
            humantime::format_rfc3339_seconds(at).to_string()
        }
    }

    /// One line (without sparkline or notes).
    pub fn line(&mut self, at: SystemTime, packets: u64, bytes: u64, pps: f64, bps: f64) -> String {
        let (packets, bytes) = (output::grouped(packets), output::grouped(bytes));
        self.packets = self.packets.max(packets.len());
        self.bytes = self.bytes.max(bytes.len());
        format!(
            "{}  {packets:>pw$} packets  {bytes:>bw$} bytes  {:>14}  {:>14}",
            self.time(at),
            output::rate(pps, "pkt/s"),
            output::rate(bps, "bit/s"),
            pw = self.packets,
            bw = self.bytes,
        )
    }
}

/// `["frequency", "0.5"]` or `["0.5"]` → the period.
pub fn parse_period(words: &[String]) -> anyhow::Result<Duration> {
    let text = match words {
        [keyword, seconds] if keyword == "frequency" => seconds,
        [seconds] => seconds,
        _ => return Err(usage("usage: watch NAME frequency SECONDS")),
    };
    let seconds: f64 = text
        .parse()
        .map_err(|_| usage(format!("frequency {text:?} is not a number of seconds")))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(usage(format!(
            "frequency must be a positive number of seconds, not {text}"
        )));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| usage(format!("frequency {text} is too long")))
}

fn show(socket: &Path, name: &str) -> anyhow::Result<(Session, SystemTime)> {
    match request(
        socket,
        Command::Show {
            name: name.to_owned(),
        },
    )? {
        Reply::Session(s) => {
            let at = s
                .read_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .unwrap_or_else(SystemTime::now);
            Ok((s, at))
        }
        _ => bail!("the daemon answered show with something else"),
    }
}

pub fn watch(
    socket: &Path,
    name: &str,
    period: &[String],
    json: bool,
    zeek: bool,
) -> anyhow::Result<()> {
    let period = parse_period(period)?;
    let (mut last, mut last_at) = show(socket, name)?;
    let picture = !json && !zeek && std::io::stdout().is_terminal();
    let mut recent_pps: VecDeque<f64> = VecDeque::with_capacity(SPARKLINE_PERIODS);
    let mut columns = Columns::new(period);
    loop {
        std::thread::sleep(period);
        let (now, now_at) = show(socket, name)?;
        let seconds = now_at
            .duration_since(last_at)
            .unwrap_or(period)
            .as_secs_f64()
            .max(1e-9);
        let packets = now
            .packets
            .unwrap_or(0)
            .saturating_sub(last.packets.unwrap_or(0));
        let bytes = now
            .bytes
            .unwrap_or(0)
            .saturating_sub(last.bytes.unwrap_or(0));
        let pps = packets as f64 / seconds;
        let bps = bytes as f64 * 8.0 / seconds;
        if zeek {
            let sample = crate::zeek::Sample {
                time: now_at,
                seconds,
                packets,
                bytes,
            };
            println!("{}", sample.line());
        } else if json {
            output::json_line(&JsonLine {
                session: &now,
                time: humantime::format_rfc3339_millis(now_at).to_string(),
                interval: seconds,
                pps,
                bps,
            });
        } else {
            let sparkline = if picture {
                if recent_pps.len() == SPARKLINE_PERIODS {
                    recent_pps.pop_front();
                }
                recent_pps.push_back(pps);
                let rates: Vec<f64> = recent_pps.iter().copied().collect();
                format!("  {}", output::sparkline(&rates, SPARKLINE_PERIODS))
            } else {
                String::new()
            };
            println!(
                "{}{sparkline}{}",
                columns.line(
                    now_at,
                    now.packets.unwrap_or(0),
                    now.bytes.unwrap_or(0),
                    pps,
                    bps
                ),
                if now.up { "" } else { "  (interface down)" }
            );
        }
        (last, last_at) = (now, now_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn columns_stay_aligned_as_counters_grow() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let mut columns = Columns::new(Duration::from_secs(1));
        let position = |line: &str, word: &str| line.find(word).unwrap();
        let small = columns.line(at, 5, 300, 5.0, 2400.0);
        let same = columns.line(at, 1_234_567, 9_999_999, 1e6, 8e6);
        assert_eq!(small.len(), same.len(), "{small}\n{same}");
        assert_eq!(position(&small, " packets"), position(&same, " packets"));
        assert_eq!(position(&small, " bytes"), position(&same, " bytes"));
        // Wider than ever before: the column widens, and stays so for smaller values.
        let wide = columns.line(at, 12_345_678_901, 98_765_432_109, 0.0, 0.0);
        let after = columns.line(at, 7, 8, 0.0, 0.0);
        assert_eq!(wide.len(), after.len(), "{wide}\n{after}");
        assert_eq!(position(&wide, " packets"), position(&after, " packets"));
        assert_eq!(position(&wide, " bytes"), position(&after, " bytes"));
        assert!(small.starts_with("2023-11-14T22:13:20Z  "), "{small}");
        // Below a second, the time has milliseconds.
        let mut fast = Columns::new(Duration::from_millis(500));
        let line = fast.line(at, 1, 1, 0.0, 0.0);
        assert!(line.starts_with("2023-11-14T22:13:20.250Z  "), "{line}");
    }

    #[test]
    fn json_lines_keep_shows_key_order() {
        let session: Session = serde_json::from_str(
            r#"{"name":"w","interface":"eth0","filter":"udp","packets":3,"bytes":180,"up":true,
                "hook":"socket","direction":"both","created":"c","modified":"m","read_at":"r"}"#,
        )
        .unwrap();
        let show = serde_json::to_string(&session).unwrap();
        let line = serde_json::to_string(&JsonLine {
            session: &session,
            time: "t".into(),
            interval: 0.5,
            pps: 6.0,
            bps: 2880.0,
        })
        .unwrap();
        let fields = show.trim_end_matches('}');
        assert!(line.starts_with(fields), "{line}\n{show}");
        assert!(
            line.ends_with(r#","time":"t","interval":0.5,"pps":6.0,"bps":2880.0}"#),
            "{line}"
        );
    }

    #[test]
    fn periods() {
        assert_eq!(
            parse_period(&words("frequency 0.5")).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_period(&words("2")).unwrap(), Duration::from_secs(2));
        for bad in [
            "frequency 0",
            "frequency -1",
            "frequency x",
            "frequency inf",
            "frequency NaN",
            "every 1",
        ] {
            assert!(parse_period(&words(bad)).is_err(), "{bad}");
        }
    }
}
