//! `--zeek`: lines in the field names and units of Zeek's capstats, so that parsers
//! written for it (split on spaces, then each field on its first `=`) read ours:
//!
//! `1719999999.123456 s=10.000 pkts=12345 kpps=1.234 kbytes=900.000 mbps=7.373`
//!
//! The first field is the time of the reading (Unix seconds); every value is a number,
//! as ZeekControl's parser (which reads them as floats) expects: a line is about the
//! session named on the command line, as Zeek's capstats's is about its interface. `pkts` and `kbytes` are what the session
//! counted during the `s` seconds before the reading; `kpps` and `mbps` the rates over
//! them (kbytes are 1,024 bytes, as Zeek's; mbps are 10^6 bits per second).

use std::time::{SystemTime, UNIX_EPOCH};

use capstats_common::protocol::Session;

/// What one line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the counters were read.
    pub time: SystemTime,
    /// The interval's length in seconds.
    pub seconds: f64,
    /// Packets and bytes counted during the interval.
    pub packets: u64,
    pub bytes: u64,
}

impl Sample {
    /// The line, without its line feed.
    pub fn line(&self) -> String {
        let time = self
            .time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let (kpps, mbps) = if self.seconds > 0.0 {
            (
                self.packets as f64 / self.seconds / 1e3,
                self.bytes as f64 * 8.0 / self.seconds / 1e6,
            )
        } else {
            (0.0, 0.0)
        };
        format!(
            "{time:.6} s={:.3} pkts={} kpps={kpps:.3} kbytes={:.3} mbps={mbps:.3}",
            self.seconds,
            self.packets,
            self.bytes as f64 / 1024.0,
        )
    }
}

fn parse_time(text: Option<&str>) -> Option<SystemTime> {
    text.and_then(|t| humantime::parse_rfc3339(t).ok())
}

/// `poll --zeek`: with no earlier reading to subtract, the interval is the session's
/// whole life (from `created` to the reading) and the counts are its totals, so the
/// rates are averages over that life. `watch --zeek` gives rates per period.
pub fn since_created(session: &Session) -> Sample {
    let time = parse_time(session.read_at.as_deref()).unwrap_or_else(SystemTime::now);
    let seconds = parse_time(Some(&session.created))
        .and_then(|created| time.duration_since(created).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    Sample {
        time,
        seconds,
        packets: session.packets.unwrap_or(0),
        bytes: session.bytes.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    /// What a ZeekControl-style reader does: split on spaces; the first field is the
    /// time, each other `key=value` on its first `=`; every value a float.
    fn parse(line: &str) -> (f64, BTreeMap<String, f64>) {
        let mut fields = line.split(' ');
        let time: f64 = fields.next().unwrap().parse().unwrap();
        let mut numbers = BTreeMap::new();
        for field in fields {
            let (key, value) = field.split_once('=').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{field}"));
            numbers.insert(key.to_owned(), value);
        }
        (time, numbers)
    }

    #[test]
    fn a_line_in_zeeks_units() {
        let sample = Sample {
            time: UNIX_EPOCH + Duration::from_micros(1_719_999_999_123_456),
            seconds: 10.0,
            packets: 12_345,
            bytes: 921_600,
        };
        let line = sample.line();
        assert_eq!(
            line,
            "1719999999.123456 s=10.000 pkts=12345 kpps=1.234 kbytes=900.000 mbps=0.737"
        );
        let (time, numbers) = parse(&line);
        assert!((time - 1_719_999_999.123_456).abs() < 1e-3);
        for (key, value) in [
            ("s", 10.0),
            ("pkts", 12345.0),
            ("kpps", 1.234),
            ("kbytes", 900.0),
            ("mbps", 0.737),
        ] {
            assert!((numbers[key] - value).abs() < 1e-9, "{key}");
        }
    }

    #[test]
    fn an_empty_interval_has_no_rate() {
        let sample = Sample {
            time: UNIX_EPOCH,
            seconds: 0.0,
            packets: 5,
            bytes: 100,
        };
        let (_, numbers) = parse(&sample.line());
        assert_eq!(numbers["kpps"], 0.0);
        assert_eq!(numbers["mbps"], 0.0);
    }

    #[test]
    fn poll_divides_by_the_sessions_life() {
        let session = Session {
            name: "dns".into(),
            interface: "veth-b".into(),
            filter: "udp".into(),
            packets: Some(2_000),
            bytes: Some(250_000),
            up: true,
            hook: capstats_common::hook::HookName::Socket,
            direction: capstats_common::hook::Direction::Both,
            mode: None,
            packets_counted: None,
            created: "2026-01-01T00:00:00Z".into(),
            modified: "2026-01-01T00:00:00Z".into(),
            counting_since: None,
            survives_daemon: None,
            compiling: false,
            reason: None,
            link: None,
            read_at: Some("2026-01-01T00:00:04.000000000Z".into()),
        };
        let sample = since_created(&session);
        assert_eq!(sample.seconds, 4.0);
        let (_, numbers) = parse(&sample.line());
        assert_eq!(numbers["pkts"], 2000.0);
        assert_eq!(numbers["kpps"], 0.5);
        assert_eq!(numbers["mbps"], 0.5);
    }
}
