//! What sessions cost live: the same offered stream with 0, 1, 64 and 256 capstats
//! sessions on the receiving veth, at each hook, each session with one of the hooks
//! table's typical filters (`hooks::session_filter`: host, tcp port, udp port, vlan
//! and udp, tcp flags, with moving parameters).
//!
//! The receive path runs in the generator's softirq, so the generator thread's CPU
//! time per frame (plus ksoftirqd's, for deferred receive work) is what a frame costs
//! the machine; a session's cost is the growth of that figure over the run with no
//! session, divided by the sessions. Every session must count exactly what libpcap
//! says its filter matches of the frames offered since it was made.

use std::fmt::Write as _;

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::{Command, HookName, Reply};
use capstats_ebpf::filter::Filter;
use serde_json::json;

use super::{offer, softirqd_ns, tools};
use crate::daemon::client::Connection;
use crate::daemon::netns::Pair;
use crate::daemon::process::Daemon;
use crate::hooks::session_filter;
use crate::loadgen::{Flow, Generator};
use crate::stats::median;

/// Sessions per row (0: the baseline, measured once per round).
pub const COUNTS: [usize; 3] = [1, 64, 256];
const HOOKS: [HookName; 3] = [HookName::Socket, HookName::Tc, HookName::Xdp];

/// One row: a hook with N sessions (`None`: no session at all).
#[derive(Debug)]
pub struct Row {
    pub hook: Option<HookName>,
    pub sessions: usize,
    /// Per round: CPU ns per frame of the generator thread and ksoftirqd.
    pub ns_per_frame: Vec<f64>,
    /// Per round: frames per second of the generator thread's CPU.
    pub rate_per_cpu: Vec<f64>,
    /// Whether every session counted exactly its filter's frames.
    pub exact: bool,
}

impl Row {
    fn ns(&self) -> f64 {
        med(&self.ns_per_frame)
    }
}

fn med(values: &[f64]) -> f64 {
    let scaled: Vec<u64> = values.iter().map(|v| (v * 1e3).round() as u64).collect();
    median(&scaled) as f64 / 1e3
}

fn name(i: usize) -> String {
    format!("scale-{i:03}")
}

/// Measures every row, `rounds` runs each; the daemon of `context` is left with no
/// session of its own.
pub fn measure(
    context: &tools::Context,
    generator: &Generator,
    flows: &[Flow],
    per_flow: u64,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let stream = Stream {
        pair: context.pair,
        generator,
        flows,
        per_flow,
    };
    measure_sessions(context.daemon, &stream, rounds, &COUNTS, &session_filter)
}

/// What is offered in each run.
pub struct Stream<'a> {
    pub pair: &'a Pair,
    pub generator: &'a Generator,
    pub flows: &'a [Flow],
    pub per_flow: u64,
}

/// [`measure`] with any session filters: rows of `counts` sessions of `daemon` at each
/// hook, session `i` counting `filter(i)` (untagged flows only: their expected counts
/// come from libpcap's savefile semantics). The daemon is left with no session of its own.
pub fn measure_sessions(
    daemon: &Daemon,
    stream: &Stream,
    rounds: usize,
    counts: &[usize],
    filter: &dyn Fn(usize) -> String,
) -> anyhow::Result<Vec<Row>> {
    let Stream {
        pair,
        generator,
        flows,
        per_flow,
    } = *stream;
    let most = counts.iter().copied().max().unwrap_or(0);
    // Frames of one run that session i's filter matches (the flows are untagged, so
    // live and savefile semantics agree).
    let expected: Vec<u64> = (0..most)
        .map(|i| {
            let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, &filter(i), 0)?;
            Ok(flows
                .iter()
                .filter(|f| filter.libpcap_matches(&f.frame))
                .count() as u64
                * per_flow)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut connection = Connection::open(daemon.socket())?;
    let run = || -> anyhow::Result<(f64, f64)> {
        let softirqd = softirqd_ns();
        let offered = offer(pair, generator, flows, per_flow)?;
        let ns = offered.thread_cpu_ns + softirqd_ns().saturating_sub(softirqd);
        Ok((ns as f64 / offered.frames as f64, offered.per_cpu_second()))
    };

    let mut rows = vec![Row {
        hook: None,
        sessions: 0,
        ns_per_frame: Vec::new(),
        rate_per_cpu: Vec::new(),
        exact: true,
    }];
    for hook in HOOKS {
        // The baseline before each hook's rows: no session anywhere.
        for _ in 0..rounds {
            let (ns, rate) = run()?;
            rows[0].ns_per_frame.push(ns);
            rows[0].rate_per_cpu.push(rate);
        }
        // Runs each session has seen: it must have counted that many times its share.
        let mut runs_seen: Vec<u64> = Vec::new();
        for &n in counts {
            eprintln!(
                "peers: live cost, {n} sessions at the {} hook",
                hook.as_str()
            );
            for i in runs_seen.len()..n {
                connection
                    .call(Command::New {
                        name: name(i),
                        interface: Some(crate::daemon::netns::RECV_IF.to_owned()),
                        filter: filter(i),
                        hook: Some(hook),
                        direction: None,
                        packets: None,
                    })
                    .with_context(|| format!("new {} ({})", name(i), filter(i)))?;
                runs_seen.push(0);
            }
            let mut row = Row {
                hook: Some(hook),
                sessions: n,
                ns_per_frame: Vec::new(),
                rate_per_cpu: Vec::new(),
                exact: false,
            };
            for _ in 0..rounds {
                let (ns, rate) = run()?;
                row.ns_per_frame.push(ns);
                row.rate_per_cpu.push(rate);
                runs_seen.iter_mut().for_each(|r| *r += 1);
            }
            let Reply::Sessions(sessions) = connection.call(Command::Poll { names: Vec::new() })?
            else {
                bail!("poll did not answer with sessions");
            };
            let mut wrong = Vec::new();
            for (i, seen) in runs_seen.iter().enumerate() {
                let session = sessions
                    .iter()
                    .find(|s| s.name == name(i))
                    .with_context(|| format!("{} is not polled", name(i)))?;
                let want = expected[i] * seen;
                if session.packets != Some(want) || !session.up {
                    wrong.push(format!(
                        "{}: {:?}, expected {want}",
                        name(i),
                        session.packets
                    ));
                }
            }
            ensure!(
                wrong.is_empty(),
                "{n} sessions at the {} hook miscounted: {}",
                hook.as_str(),
                wrong.join("; ")
            );
            row.exact = true;
            rows.push(row);
        }
        for i in 0..runs_seen.len() {
            connection.call(Command::Stop { name: name(i) })?;
        }
    }
    Ok(rows)
}

/// The table for people.
pub fn report(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nlive cost of sessions: N sessions of the hooks table's typical filters on the receiving \
         veth;\nns/frame = CPU of the generator thread and ksoftirqd per frame offered (the receive \
         path runs there), median of the runs\n"
    );
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9}  counts",
        "hook", "sessions", "ns/frame", "above", "/session", "Mpps/cpu"
    );
    let base = rows.first().map_or(0.0, Row::ns);
    for row in rows {
        let above = row.ns() - base;
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>9.0} {:>9} {:>9} {:>9.3}  {}",
            row.hook.map_or("none", |h| h.as_str()),
            row.sessions,
            row.ns(),
            if row.sessions == 0 {
                "-".to_owned()
            } else {
                format!("{above:.0}")
            },
            if row.sessions == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}", above / row.sessions as f64)
            },
            med(&row.rate_per_cpu) / 1e6,
            if row.sessions == 0 {
                "-"
            } else if row.exact {
                "exact"
            } else {
                "WRONG"
            }
        );
    }
    out
}

pub fn to_json(rows: &[Row]) -> serde_json::Value {
    let base = rows.first().map_or(0.0, Row::ns);
    json!({
        "method": "the peer stream offered with N sessions (hooks::session_filter) on the \
                   receiving veth; ns_per_frame: CPU ns of the generator thread and ksoftirqd \
                   per frame offered; per_session_ns: (ns_per_frame - the no-session row's) / N",
        "rows": rows.iter().map(|r| json!({
            "hook": r.hook.map(|h| h.as_str()),
            "sessions": r.sessions,
            "ns_per_frame": (r.ns() * 10.0).round() / 10.0,
            "per_session_ns": if r.sessions == 0 {
                serde_json::Value::Null
            } else {
                json!(((r.ns() - base) / r.sessions as f64 * 10.0).round() / 10.0)
            },
            "ns_per_frame_runs": r.ns_per_frame,
            "rate_per_cpu_runs": r.rate_per_cpu,
            "exact": r.exact,
        })).collect::<Vec<_>>(),
    })
}
