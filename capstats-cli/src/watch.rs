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
            let mut object = serde_json::to_value(&now).expect("plain data serializes");
            object["time"] = humantime::format_rfc3339_millis(now_at).to_string().into();
            object["interval"] = seconds.into();
            object["pps"] = pps.into();
            object["bps"] = bps.into();
            output::json_line(&object);
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
                "{}  {} packets  {} bytes  {:>14}  {:>14}{sparkline}{}",
                humantime::format_rfc3339_seconds(now_at),
                output::grouped(now.packets.unwrap_or(0)),
                output::grouped(now.bytes.unwrap_or(0)),
                output::rate(pps, "pkt/s"),
                output::rate(bps, "bit/s"),
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
