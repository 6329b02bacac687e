//! Sessions in the Prometheus text exposition format (version 0.0.4), as the daemon's
//! `/metrics` endpoint serves them and as `capstats poll --prometheus` prints them for
//! node_exporter's textfile collector.
//!
//! Per session, labelled `session`, `interface`, `hook`, `direction` and `packets`
//! (`stack` or `wire`: what a packet and its bytes are, see the README):
//! `capstats_session_packets_total` and `capstats_session_bytes_total` (counters),
//! `capstats_session_up` (0 or 1) and `capstats_session_info` (always 1, with the
//! filter as a label too). Then `capstats_sessions` and `capstats_build_info`, and the
//! daemon's error counters where the caller knows them.

use std::fmt::Write;

use crate::protocol::Session;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What is said besides the sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonInfo {
    /// The version of the program producing the exposition (`capstats_build_info`).
    pub version: String,
    /// Requests the daemon answered with an error, if known
    /// (`capstats_request_errors_total`).
    pub request_errors: Option<u64>,
    /// Scrapes that could not read the counters, if known
    /// (`capstats_scrape_errors_total`).
    pub scrape_errors: Option<u64>,
}

/// A label value as the text format wants it: backslash, double quote and line feed
/// escaped (`\\`, `\"`, `\n`); everything else as it is (UTF-8).
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{a="x",b="y"}`.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A per-session family: name, type, help, and the value of a session (if it has one).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Session) -> Option<u64>,
);

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // HELP texts are ours: no backslash or line feed to escape.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition: every metric family once, its samples one per session.
pub fn render(sessions: &[Session], daemon: &DaemonInfo) -> String {
    let mut out = String::new();
    let ids: Vec<String> = sessions
        .iter()
        .map(|s| {
            labels(&[
                ("session", &s.name),
                ("interface", &s.interface),
                ("hook", s.hook.as_str()),
                ("direction", s.direction.as_str()),
                ("packets", s.packets().as_str()),
            ])
        })
        .collect();
    let families: [Family; 3] = [
        (
            "capstats_session_packets_total",
            "counter",
            "Packets the session's filter matched since the session was created.",
            |s| s.packets,
        ),
        (
            "capstats_session_bytes_total",
            "counter",
            "Bytes (link-layer header included) of the packets the session matched: as the \
             stack holds them (label packets stack) or as the frames on the wire (packets wire).",
            |s| s.bytes,
        ),
        (
            "capstats_session_up",
            "gauge",
            "1 if the session's interface is there and the session counts, else 0.",
            |s| Some(u64::from(s.up)),
        ),
    ];
    for (name, kind, help, value) in families {
        header(&mut out, name, kind, help);
        for (session, id) in sessions.iter().zip(&ids) {
            if let Some(value) = value(session) {
                let _ = writeln!(out, "{name}{id} {value}");
            }
        }
    }
    if sessions.iter().any(|s| s.survives_daemon.is_some()) {
        let name = "capstats_session_survives_daemon";
        header(
            &mut out,
            name,
            "gauge",
            "1 if the session's pinned counters (and tc/xdp links) outlive the daemon, 0 if \
             they die with it (a bpffs of the daemon's own mount namespace).",
        );
        for (session, id) in sessions.iter().zip(&ids) {
            if let Some(survives) = session.survives_daemon {
                let _ = writeln!(out, "{name}{id} {}", u64::from(survives));
            }
        }
    }
    header(
        &mut out,
        "capstats_session_info",
        "gauge",
        "Always 1; the session's filter expression (empty: every packet) as a label.",
    );
    for s in sessions {
        let _ = writeln!(
            out,
            "capstats_session_info{} 1",
            labels(&[
                ("session", &s.name),
                ("interface", &s.interface),
                ("hook", s.hook.as_str()),
                ("direction", s.direction.as_str()),
                ("packets", s.packets().as_str()),
                ("filter", &s.filter),
            ])
        );
    }
    header(
        &mut out,
        "capstats_sessions",
        "gauge",
        "Sessions reported here.",
    );
    let _ = writeln!(out, "capstats_sessions {}", sessions.len());
    header(
        &mut out,
        "capstats_build_info",
        "gauge",
        "Always 1; the version of capstats as a label.",
    );
    let _ = writeln!(
        out,
        "capstats_build_info{} 1",
        labels(&[("version", &daemon.version)])
    );
    if let Some(errors) = daemon.request_errors {
        header(
            &mut out,
            "capstats_request_errors_total",
            "counter",
            "Requests on the daemon's socket answered with an error.",
        );
        let _ = writeln!(out, "capstats_request_errors_total {errors}");
    }
    if let Some(errors) = daemon.scrape_errors {
        header(
            &mut out,
            "capstats_scrape_errors_total",
            "counter",
            "Scrapes of /metrics that could not read the counters.",
        );
        let _ = writeln!(out, "capstats_scrape_errors_total {errors}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, filter: &str, packets: u64, bytes: u64) -> Session {
        Session {
            name: name.into(),
            interface: "veth-b".into(),
            filter: filter.into(),
            packets: Some(packets),
            bytes: Some(bytes),
            up: true,
            hook: crate::hook::HookName::Tc,
            direction: crate::hook::Direction::In,
            mode: None,
            packets_counted: None,
            created: "2026-01-01T00:00:00Z".into(),
            modified: "2026-01-01T00:00:00Z".into(),
            counting_since: None,
            survives_daemon: None,
            compiling: false,
            reason: None,
            link: None,
            read_at: Some("2026-01-01T00:00:10.000000000Z".into()),
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("tcp port 80"), "tcp port 80");
        assert_eq!(
            escape_label_value("a\\b\"c\nd"),
            "a\\\\b\\\"c\\nd",
            "backslash, quote, line feed"
        );
        assert_eq!(escape_label_value("é\t"), "é\t");
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut down = session("dns", "udp port 53", 3, 180);
        down.up = false;
        down.hook = crate::hook::HookName::Socket;
        down.direction = crate::hook::Direction::Both;
        let mut web = session("web", "ether proto \\ip and\n\"x\"", 12, 840);
        web.packets_counted = Some(crate::protocol::Packets::Wire);
        let text = render(
            &[web, down],
            &DaemonInfo {
                version: "0.3.0".into(),
                request_errors: Some(2),
                scrape_errors: None,
            },
        );
        let expected = r#"# HELP capstats_session_packets_total Packets the session's filter matched since the session was created.
# TYPE capstats_session_packets_total counter
capstats_session_packets_total{session="web",interface="veth-b",hook="tc",direction="in",packets="wire"} 12
capstats_session_packets_total{session="dns",interface="veth-b",hook="socket",direction="both",packets="stack"} 3
# HELP capstats_session_bytes_total Bytes (link-layer header included) of the packets the session matched: as the stack holds them (label packets stack) or as the frames on the wire (packets wire).
# TYPE capstats_session_bytes_total counter
capstats_session_bytes_total{session="web",interface="veth-b",hook="tc",direction="in",packets="wire"} 840
capstats_session_bytes_total{session="dns",interface="veth-b",hook="socket",direction="both",packets="stack"} 180
# HELP capstats_session_up 1 if the session's interface is there and the session counts, else 0.
# TYPE capstats_session_up gauge
capstats_session_up{session="web",interface="veth-b",hook="tc",direction="in",packets="wire"} 1
capstats_session_up{session="dns",interface="veth-b",hook="socket",direction="both",packets="stack"} 0
# HELP capstats_session_info Always 1; the session's filter expression (empty: every packet) as a label.
# TYPE capstats_session_info gauge
capstats_session_info{session="web",interface="veth-b",hook="tc",direction="in",packets="wire",filter="ether proto \\ip and\n\"x\""} 1
capstats_session_info{session="dns",interface="veth-b",hook="socket",direction="both",packets="stack",filter="udp port 53"} 1
# HELP capstats_sessions Sessions reported here.
# TYPE capstats_sessions gauge
capstats_sessions 2
# HELP capstats_build_info Always 1; the version of capstats as a label.
# TYPE capstats_build_info gauge
capstats_build_info{version="0.3.0"} 1
# HELP capstats_request_errors_total Requests on the daemon's socket answered with an error.
# TYPE capstats_request_errors_total counter
capstats_request_errors_total 2
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn no_sessions_still_says_so() {
        let text = render(&[], &DaemonInfo::default());
        assert!(text.contains("\ncapstats_sessions 0\n"), "{text}");
        assert!(text.contains("# TYPE capstats_session_packets_total counter\n"));
        assert!(!text.contains("capstats_request_errors_total"));
        // Every line is a comment or a sample; the text ends with a line feed.
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("capstats_"),
                "{line}"
            );
        }
    }
}
