//! The daemon's figures for people (the second table of the bench's output) and for
//! bench/results.json (its `daemon` object).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use super::latency::Latency;
use super::netns::{RECV_IF, SEND_IF};
use super::process::clock_ticks_per_second;
use super::{COUNTING, Figures, METRICS, SESSIONS};
use crate::Machine;

/// The binary's path relative to the workspace root when it is inside it (as
/// `target/release/capstats`): results.json is committed, and this machine's absolute
/// paths mean nothing elsewhere.
fn shown_path(path: &Path) -> String {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().unwrap_or(manifest_dir);
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in ns for people: µs below a millisecond, ms above.
fn short_time(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

/// The second table of the bench's output.
pub fn report(machine: &Machine, figures: &Figures) -> String {
    let mut out = String::new();
    let c = &figures.counting;
    let tck = clock_ticks_per_second();
    let _ = writeln!(
        out,
        "daemon:  {} -d, in a network namespace; sessions on one end of a veth pair",
        shown_path(&figures.capstats)
    );
    let _ = writeln!(out, "machine: {machine}\n");
    let _ = writeln!(
        out,
        "{:<26} {:>8} {:>7} {:>10} {:>10}",
        "poll (all sessions)", "sessions", "samples", "median", "p99"
    );
    for l in &figures.latencies {
        let _ = writeln!(
            out,
            "{:<26} {:>8} {:>7} {:>10} {:>10}",
            l.method.label(),
            l.sessions,
            l.samples_ns.len(),
            short_time(l.median_ns()),
            short_time(l.p99_ns())
        );
    }

    let _ = writeln!(
        out,
        "\n{:<26} {:>8} {:>7} {:>10} {:>10} {:>11}",
        "GET /metrics", "sessions", "samples", "median", "p99", "exposition"
    );
    for scrapes in &figures.scrapes {
        for l in &scrapes.latencies {
            let _ = writeln!(
                out,
                "{:<26} {:>8} {:>7} {:>10} {:>10} {:>9} B",
                l.method.label(),
                l.sessions,
                l.samples_ns.len(),
                short_time(l.median_ns()),
                short_time(l.p99_ns()),
                thousands(scrapes.body_bytes as u64)
            );
        }
    }

    let seconds = c.sent.elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "\ncounting {} frames ({}-byte UDP) written into the pair in {seconds:.2} s: {} frames/s",
        thousands(c.sent.frames),
        c.frame_bytes,
        thousands(c.sent.per_second().round() as u64),
    );
    let _ = writeln!(
        out,
        "  {:<28} {} received, {} dropped",
        format!("{RECV_IF} (kernel)"),
        thousands(c.received),
        thousands(c.dropped)
    );
    for (&(name, filter), &(packets, bytes)) in COUNTING.iter().zip(&c.counted) {
        let _ = writeln!(
            out,
            "  {:<28} {} packets, {} bytes",
            format!("session {name} ({filter})"),
            thousands(packets),
            thousands(bytes)
        );
    }
    let _ = writeln!(
        out,
        "  {:<28} {}",
        "counts",
        if c.exact() {
            "exact: udp = frames sent = frames received, tcp = 0"
        } else {
            "!!! NOT EXACT: the counts differ from the frames sent"
        }
    );
    let _ = writeln!(
        out,
        "  {:<28} {:.2} s ({} ticks of 1/{tck} s, utime+stime); {:.3} ms on a CPU (schedstat)",
        "daemon CPU",
        c.daemon_ticks() as f64 / tck as f64,
        c.daemon_ticks(),
        c.daemon_on_cpu_ns() as f64 / 1e6
    );
    let secs = |ticks: u64| ticks as f64 / tck as f64;
    let _ = writeln!(
        out,
        "  {:<28} {:.2} s busy of {:.2} s ({} CPUs): user {:.2}, system {:.2}, softirq {:.2}",
        "machine CPU",
        secs(c.machine.busy),
        secs(c.machine.busy + c.machine.idle),
        machine.cpus,
        secs(c.machine.user),
        secs(c.machine.system),
        secs(c.machine.softirq)
    );

    let _ = writeln!(out, "\ndaemon memory (VmRSS)");
    let r = &figures.rss;
    for (label, kib) in [
        ("idle, 0 sessions".to_owned(), r.idle),
        (format!("{SESSIONS} sessions"), r.sessions),
        (
            format!("after the {} frames", thousands(c.sent.frames)),
            r.after_frames,
        ),
    ] {
        let _ = writeln!(out, "  {label:<28} {:>7} KiB", thousands(kib));
    }
    out
}

/// The `daemon` object of bench/results.json.
pub fn to_json(figures: &Figures) -> serde_json::Value {
    let c = &figures.counting;
    let tck = clock_ticks_per_second();
    let secs = |ticks: u64| ticks as f64 / tck as f64;
    json!({
        "binary": shown_path(&figures.capstats),
        "setup": format!(
            "capstats -d in a network namespace; sessions on {RECV_IF}, one end of a veth pair; \
             frames written on the other end ({SEND_IF}) from a second namespace"
        ),
        "poll": figures.latencies.iter().map(Latency::to_json).collect::<Vec<_>>(),
        "scrape": {
            "request": format!("GET http://{METRICS}/metrics (HTTP/1.1), from a thread in the daemon's namespace"),
            "results": figures.scrapes.iter().flat_map(|scrapes| {
                scrapes.latencies.iter().map(|l| {
                    let mut value = l.to_json();
                    value["body_bytes"] = scrapes.body_bytes.into();
                    value
                })
            }).collect::<Vec<_>>(),
        },
        "counting": {
            "frames_sent": c.sent.frames,
            "frame_bytes": c.frame_bytes,
            "seconds": c.sent.elapsed.as_secs_f64(),
            "frames_per_second": c.sent.per_second().round(),
            "send_retries": c.sent.retries,
            "received": c.received,
            "dropped": c.dropped,
            "sessions": COUNTING.iter().zip(&c.counted).map(|(&(name, filter), &(packets, bytes))| json!({
                "name": name, "filter": filter, "packets": packets, "bytes": bytes,
            })).collect::<Vec<_>>(),
            "exact": c.exact(),
            "daemon_cpu_seconds": secs(c.daemon_ticks()),
            "daemon_cpu_ticks": c.daemon_ticks(),
            "clock_ticks_per_second": tck,
            "daemon_on_cpu_ns": c.daemon_on_cpu_ns(),
            "machine_cpu_seconds": {
                "busy": secs(c.machine.busy),
                "user": secs(c.machine.user),
                "system": secs(c.machine.system),
                "softirq": secs(c.machine.softirq),
                "available": secs(c.machine.busy + c.machine.idle),
            },
        },
        "rss_kib": {
            "idle_0_sessions": figures.rss.idle,
            "with_64_sessions": figures.rss.sessions,
            "after_frames": figures.rss.after_frames,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn short_times() {
        assert_eq!(short_time(23_140), "23.1 µs");
        assert_eq!(short_time(1_923_000), "1.92 ms");
    }
}
