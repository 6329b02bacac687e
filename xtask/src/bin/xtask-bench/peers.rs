//! capstats against the tools users would pick instead, counting the same expression on
//! the same offered stream, one tool at a time.
//!
//! The stream: [`loadgen`](crate::loadgen) sends an exact number of frames from eight
//! flows into the bench's veth pair at the highest rate it reaches; the expression
//! matches a known share of the flows (libpcap says which, before anything runs), so
//! every tool's count has an exact expected value. The receiving side runs in the
//! generator's own softirq (veth), so the more a tool makes the kernel do per frame, the
//! lower the rate the generator achieves: the rate is a meter of the per-frame cost,
//! and the machine's CPU time per frame is the other.
//!
//! The tools ([`Tool`]): nothing attached (the baseline); capstats' daemon with a
//! session on each hook (socket, tc, xdp); tcpdump writing to /dev/null and tcpdump
//! printing to /dev/null (libpcap, TPACKET_V3; their counts are their own statistics,
//! printed at SIGINT); Zeek's capstats (libpcap, counting in user space); iptables with
//! `-m bpf --bytecode` (the classic program in netfilter, a kernel peer). Each round
//! runs every tool once, in that order; the figures are medians over the rounds, the
//! counts the worst round's.
//!
//! Per run: start the tool and wait until it counts; read the machine's CPU time
//! (`/proc/stat`), the tool's (its process's threads), the interfaces' counters; offer
//! the stream; wait [`SETTLE`] for the tool to catch up; stop it and read its count
//! (the tool's CPU includes its shutdown); read everything again.

mod scaling;
pub mod shared_live;
mod tools;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_common::protocol::HookName;
use capstats_ebpf::filter::Filter;
use serde_json::json;

use crate::Machine;
use crate::daemon::Scratch;
use crate::daemon::netns::{Namespace, Pair, RECV_IF, SEND_IF};
use crate::daemon::process::{Daemon, clock_ticks_per_second};
use crate::daemon::report::thousands;
use crate::daemon::traffic::MachineCpu;
use crate::frame;
use crate::loadgen::{self, Flow, Generator, Offered};
use crate::stats::median;
pub use tools::Tool;

/// How long a tool gets after the last frame to finish counting what is queued for it.
const SETTLE: Duration = Duration::from_millis(300);
/// The frame sizes whose generator rate is measured with nothing attached.
pub const SIZES: [usize; 3] = [64, 512, 1500];
/// The target for the generator: frames per second offered into the pair.
const RATE_TARGET: f64 = 1e6;
/// The target for the daemon's own CPU time during a run.
const DAEMON_CPU_TARGET_S: f64 = 0.01;
/// Where the daemon serves `/metrics` during the peer runs (its namespace's loopback).
const METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9478);

/// What to measure with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `capstats` binary (a release build).
    pub capstats: PathBuf,
    /// The expression every tool counts.
    pub expression: String,
    /// Frames offered per run (rounded down to a multiple of the flows).
    pub frames: u64,
    /// Frame size of the comparison, bytes.
    pub size: usize,
    /// Rounds: each runs every tool once.
    pub rounds: usize,
    /// Frames per generator-rate run, per size, with nothing attached.
    pub rate_frames: u64,
}

/// The generator's rate with nothing attached, for one frame size.
#[derive(Debug)]
pub struct Rate {
    pub size: usize,
    pub offered: Offered,
    pub link: LinkDelta,
}

/// One tool's run.
#[derive(Debug, Clone)]
pub struct Run {
    pub offered: Offered,
    /// What the tool counted; `None` for the baseline.
    pub counted: Option<u64>,
    /// The tool's own process(es), ns on a CPU during the run; `None` for tools without a
    /// process (the baseline, iptables).
    pub tool_cpu_ns: Option<u64>,
    /// The machine's CPU during the run, clock ticks.
    pub machine: MachineCpu,
    /// The ksoftirqd threads' time on a CPU during the run, ns: receive work the kernel
    /// deferred from the generator's softirq.
    pub softirqd_ns: u64,
    pub link: LinkDelta,
    /// What the tool said besides its count (tcpdump's statistics lines...).
    pub detail: String,
}

/// The pair's interface counters over a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkDelta {
    /// Frames the receiving veth received.
    pub received: u64,
    /// Frames the receiving veth counted as dropped.
    pub rx_dropped: u64,
    /// Frames the sending veth counted as sent and as dropped (XDP_TX that its peer
    /// could not take).
    pub sent: u64,
    pub tx_dropped: u64,
}

/// Everything the comparison measured.
#[derive(Debug)]
pub struct Figures {
    pub expression: String,
    pub size: usize,
    pub flows: Vec<Flow>,
    /// Whether each flow matches the expression (libpcap's verdict).
    pub matching: Vec<bool>,
    pub per_flow: u64,
    pub rounds: usize,
    pub rates: Vec<Rate>,
    /// Per tool, its runs in round order.
    pub runs: Vec<(Tool, Vec<Run>)>,
    /// The iptables rule's classic program (`tcpdump -ddd` format, link type RAW).
    pub iptables_bytecode: String,
    /// capstats with 0, 1, 64 and 256 sessions per hook on the same stream.
    pub scaling: Vec<scaling::Row>,
}

impl Figures {
    /// Frames of a run the expression matches.
    pub fn expected(&self) -> u64 {
        self.matching.iter().filter(|&&m| m).count() as u64 * self.per_flow
    }

    pub fn offered(&self) -> u64 {
        self.flows.len() as u64 * self.per_flow
    }
}

/// Runs the comparison; the namespaces, the daemon, the tools and the rules are gone when
/// it returns, also on error.
pub fn measure(options: &Options) -> anyhow::Result<Figures> {
    ensure!(
        options.rounds > 0 && options.frames > 0 && options.rate_frames > 0,
        "the peer comparison needs at least one round and one frame"
    );
    let capstats = options
        .capstats
        .canonicalize()
        .with_context(|| format!("no capstats binary at {}", options.capstats.display()))?;
    let flows = loadgen::flows(options.size)?;
    let per_flow = options.frames / flows.len() as u64;
    ensure!(per_flow > 0, "fewer frames than flows");
    let ethernet = Filter::for_linktype(pcap::Linktype::ETHERNET, &options.expression, 0)
        .with_context(|| format!("compiling {:?} for Ethernet", options.expression))?;
    let matching: Vec<bool> = flows
        .iter()
        .map(|f| ethernet.libpcap_matches(&f.frame))
        .collect();
    let (bytecode, raw) = tools::iptables_bytecode(&options.expression)?;
    for (flow, &m) in flows.iter().zip(&matching) {
        // The iptables rule sees the frame from its IP header: its verdict must agree.
        ensure!(
            raw.filter(&flow.frame[14..]) == m,
            "libpcap's Ethernet and raw-IP programs for {:?} disagree on {}",
            options.expression,
            flow.description
        );
    }

    // Dropped in reverse order: the daemon, then the namespaces, then the files.
    let scratch = Scratch::create()?;
    let pair = Pair::create(frame::SRC_MAC, frame::DST_MAC)?;
    // The veth peer must run NAPI to take XDP_TX frames (else they vanish, counted
    // nowhere); GRO on turns it on. No frame of the mix is merged: the UDP ones are not
    // (no UDP GRO socket), the TCP ones carry PSH.
    tools::ethtool(&pair.receiver, &["-K", RECV_IF, "gro", "on"])?;
    let generator = Generator::load()?;

    let mut rates = Vec::new();
    for size in SIZES {
        let size_flows = loadgen::flows(size)?;
        let per = options.rate_frames / size_flows.len() as u64;
        eprintln!(
            "peers: generator rate, {size}-byte frames, {} frames",
            per * 8
        );
        let before = LinkCounters::read(&pair)?;
        let offered = offer(&pair, &generator, &size_flows, per)?;
        std::thread::sleep(SETTLE);
        let link = LinkCounters::read(&pair)?.since(&before);
        rates.push(Rate {
            size,
            offered,
            link,
        });
    }

    let daemon = Daemon::start(&capstats, &pair.receiver, &scratch.0, METRICS)?;
    let context = tools::Context {
        pair: &pair,
        daemon: &daemon,
        expression: &options.expression,
        bytecode: &bytecode,
    };
    let mut runs: Vec<(Tool, Vec<Run>)> = Tool::ALL.iter().map(|&t| (t, Vec::new())).collect();
    for round in 1..=options.rounds {
        for (tool, tool_runs) in &mut runs {
            eprintln!(
                "peers: round {round}/{}: {}, {} frames",
                options.rounds,
                tool.label(),
                per_flow * flows.len() as u64
            );
            let run = run_one(*tool, &context, &generator, &flows, per_flow)
                .with_context(|| format!("{} (round {round})", tool.label()))
                .with_context(|| format!("capstats -d logged:\n{}", daemon.log()))?;
            tool_runs.push(run);
        }
    }
    let scaling = scaling::measure(&context, &generator, &flows, per_flow, options.rounds)
        .context("the live cost of sessions")
        .with_context(|| format!("capstats -d logged:\n{}", daemon.log()))?;
    daemon.stop()?;
    drop(pair);
    drop(scratch);
    Ok(Figures {
        expression: options.expression.clone(),
        size: options.size,
        flows,
        matching,
        per_flow,
        rounds: options.rounds,
        rates,
        runs,
        scaling,
        iptables_bytecode: bytecode,
    })
}

/// The generator's run inside the sending namespace.
fn offer(
    pair: &Pair,
    generator: &Generator,
    flows: &[Flow],
    per_flow: u64,
) -> anyhow::Result<Offered> {
    pair.sender
        .run(|| {
            favour_this_thread()?;
            generator.offer(SEND_IF, flows, per_flow)
        })
        .context("the load generator")
}

/// Nice -20 for the calling thread (Linux's `setpriority` takes a thread id): on a
/// machine shared with other work, the generator and the tools then get nearly all of
/// the CPU time they ask for while the other work waits, so the rates and losses are
/// theirs, not the other work's. Not a real-time class: the other work still runs.
pub fn favour_this_thread() -> anyhow::Result<()> {
    // SAFETY: gettid and setpriority have no memory effects.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if rc != 0 {
        anyhow::bail!(
            "setpriority(nice {NICE}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The nice value of the generator and of the tools' processes.
pub const NICE: i32 = -20;

fn run_one(
    tool: Tool,
    context: &tools::Context,
    generator: &Generator,
    flows: &[Flow],
    per_flow: u64,
) -> anyhow::Result<Run> {
    let mut running = tools::Running::start(tool, context)?;
    let link_before = LinkCounters::read(context.pair)?;
    running.mark()?;
    let softirqd_before = softirqd_ns();
    let machine_before = MachineCpu::now()?;
    let offered = offer(context.pair, generator, flows, per_flow);
    std::thread::sleep(SETTLE);
    // Stopped also when the generator failed: the tool's guard would, but its count is
    // wanted only on success.
    let stopped = running.finish(context);
    let machine = MachineCpu::now()?.since(&machine_before);
    let softirqd = softirqd_ns().saturating_sub(softirqd_before);
    let link = LinkCounters::read(context.pair)?.since(&link_before);
    let offered = offered?;
    let stopped = stopped?;
    Ok(Run {
        offered,
        counted: stopped.counted,
        tool_cpu_ns: stopped.cpu_ns,
        machine,
        softirqd_ns: softirqd,
        link,
        detail: stopped.detail,
    })
}

/// The ksoftirqd threads' time on a CPU so far, ns, summed (0 for one that cannot be
/// read: a kernel thread does not go away).
fn softirqd_ns() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("ksoftirqd/"))
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

impl Run {
    /// CPU ns this run's frames cost, as far as it can be told from other work on the
    /// machine: the generator's thread (the receive path runs in its softirq), the
    /// ksoftirqd threads (receive work deferred), and the tool's processes.
    fn attributed_ns(&self) -> u64 {
        self.offered.thread_cpu_ns + self.softirqd_ns + self.tool_cpu_ns.unwrap_or(0)
    }
}

/// Both ends' counters, as `ip -s -j link` reports them.
#[derive(Debug, Clone, Copy)]
struct LinkCounters {
    rx_packets: u64,
    rx_dropped: u64,
    tx_packets: u64,
    tx_dropped: u64,
}

impl LinkCounters {
    fn read(pair: &Pair) -> anyhow::Result<Self> {
        let stats = |ns: &Namespace, interface: &str| -> anyhow::Result<serde_json::Value> {
            let text = ns.ip(&["-s", "-j", "link", "show", "dev", interface])?;
            let value: serde_json::Value = serde_json::from_str(&text).context("ip -j output")?;
            Ok(value[0]["stats64"].clone())
        };
        let recv = stats(&pair.receiver, RECV_IF)?;
        let send = stats(&pair.sender, SEND_IF)?;
        let field = |v: &serde_json::Value, dir: &str, name: &str| {
            v[dir][name]
                .as_u64()
                .with_context(|| format!("no {dir} {name} in `ip -s -j link`: {v}"))
        };
        Ok(Self {
            rx_packets: field(&recv, "rx", "packets")?,
            rx_dropped: field(&recv, "rx", "dropped")?,
            tx_packets: field(&send, "tx", "packets")?,
            tx_dropped: field(&send, "tx", "dropped")?,
        })
    }

    fn since(&self, before: &Self) -> LinkDelta {
        LinkDelta {
            received: self.rx_packets.saturating_sub(before.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            sent: self.tx_packets.saturating_sub(before.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(before.tx_dropped),
        }
    }
}

/// Clock ticks as seconds.
fn ticks_s(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks_per_second() as f64
}

/// A tool's figures over its rounds.
struct Summary {
    /// The lowest count of any round, and in how many rounds the count was exact.
    worst_counted: Option<u64>,
    exact_rounds: usize,
    /// Medians over the rounds.
    rate: f64,
    /// Frames per second of the generator thread's CPU time.
    rate_per_cpu: f64,
    /// [`Run::attributed_ns`] per offered frame.
    attributed_ns_per_frame: f64,
    machine_s: f64,
    tool_s: Option<f64>,
    ns_per_frame: f64,
    /// The most frames lost between the generator and the receiving veth in a round.
    worst_link_loss: u64,
}

impl Summary {
    fn of(figures: &Figures, runs: &[Run]) -> Self {
        let expected = figures.expected();
        let med = |values: Vec<f64>| {
            // Medians of floats through the integer median: µ-units are precise enough.
            let scaled: Vec<u64> = values.iter().map(|v| (v * 1e6).round() as u64).collect();
            median(&scaled) as f64 / 1e6
        };
        let counted: Vec<u64> = runs.iter().filter_map(|r| r.counted).collect();
        Self {
            worst_counted: counted.iter().copied().min(),
            exact_rounds: counted.iter().filter(|&&c| c == expected).count(),
            rate: med(runs.iter().map(|r| r.offered.per_second()).collect()),
            rate_per_cpu: med(runs.iter().map(|r| r.offered.per_cpu_second()).collect()),
            attributed_ns_per_frame: med(runs
                .iter()
                .map(|r| r.attributed_ns() as f64 / r.offered.frames as f64)
                .collect()),
            machine_s: med(runs.iter().map(|r| ticks_s(r.machine.busy)).collect()),
            tool_s: runs
                .iter()
                .map(|r| r.tool_cpu_ns.map(|ns| ns as f64 / 1e9))
                .collect::<Option<Vec<f64>>>()
                .map(med),
            ns_per_frame: med(runs
                .iter()
                .map(|r| ticks_s(r.machine.busy) * 1e9 / r.offered.frames as f64)
                .collect()),
            worst_link_loss: runs
                .iter()
                .map(|r| r.offered.frames.saturating_sub(r.link.received))
                .max()
                .unwrap_or(0),
        }
    }
}

/// The comparison's tables for people.
pub fn report(machine: &Machine, figures: &Figures) -> String {
    let mut out = String::new();
    let expected = figures.expected();
    let offered = figures.offered();
    let matched = figures.matching.iter().filter(|&&m| m).count();
    let _ = writeln!(
        out,
        "peers:   the same stream counted by each tool on the receiving veth, one at a time"
    );
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(
        out,
        "stream:  {} frames of {} bytes per run, {} flows of {} (XDP live frames, XDP_TX into veth)",
        thousands(offered),
        figures.size,
        figures.flows.len(),
        thousands(figures.per_flow)
    );
    let _ = writeln!(
        out,
        "filter:  {:?} matches {matched} of {} flows: {} frames expected per run",
        figures.expression,
        figures.flows.len(),
        thousands(expected)
    );
    for (flow, m) in figures.flows.iter().zip(&figures.matching) {
        let _ = writeln!(
            out,
            "           {} {}",
            if *m { "match" } else { "     " },
            flow.description
        );
    }

    let _ = writeln!(
        out,
        "\nload generator, nothing attached (veth tx: the sending veth's count; lost: offered - \
         received by the receiving veth; Mpps/cpu: per second of the generator thread's CPU):"
    );
    let _ = writeln!(
        out,
        "{:>6} {:>11} {:>11} {:>11} {:>7} {:>7} {:>8}  target",
        "frame", "offered", "veth tx", "received", "lost", "Mpps", "Mpps/cpu"
    );
    for rate in &figures.rates {
        let lost = rate.offered.frames.saturating_sub(rate.link.received);
        let pps = rate.offered.per_second();
        let target = match rate.size {
            64 if pps >= RATE_TARGET => ">= 1 Mpps: met",
            64 => ">= 1 Mpps: MISSED",
            _ => "-",
        };
        let _ = writeln!(
            out,
            "{:>6} {:>11} {:>11} {:>11} {:>7} {:>7.3} {:>8.3}  {target}",
            rate.size,
            thousands(rate.offered.frames),
            thousands(rate.link.sent),
            thousands(rate.link.received),
            thousands(lost),
            pps / 1e6,
            rate.offered.per_cpu_second() / 1e6,
        );
    }

    let _ = writeln!(
        out,
        "\nper tool: medians over {} rounds of {} frames; counted = the worst round's",
        figures.rounds,
        thousands(offered)
    );
    let _ = writeln!(
        out,
        "  counted  frames the tool counted, of {} expected (loss %)\n  \
         link     frames the receiving veth did not receive (offered - rx), worst round: lost \
         before any tool\n  \
         Mpps     the generator's rate while the tool counted (wall clock)\n  \
         Mpps/cpu frames per second of the generator thread's own CPU time (the receive path runs \
         in its softirq): the rate with a CPU to itself\n  \
         mach s   busy CPU seconds of the whole machine (/proc/stat: total - idle - iowait), \
         other users' work included\n  \
         tool s   CPU seconds of the tool's processes (the daemon: all its threads)\n  \
         mach ns  machine CPU ns per offered frame\n  \
         own ns   CPU ns per offered frame of the generator thread + ksoftirqd + the tool\n  \
         x own    own ns / the baseline's own ns;  x rate  baseline Mpps/cpu / this Mpps/cpu\n",
        thousands(expected)
    );
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>7} {:>5} {:>6} {:>8} {:>6} {:>7} {:>7} {:>6} {:>5} {:>6}",
        "tool",
        "counted",
        "loss",
        "link",
        "Mpps",
        "Mpps/cpu",
        "mach s",
        "tool s",
        "mach ns",
        "own ns",
        "x own",
        "x rate"
    );
    let summaries: Vec<(Tool, Summary)> = figures
        .runs
        .iter()
        .map(|(tool, runs)| (*tool, Summary::of(figures, runs)))
        .collect();
    let base = summaries
        .iter()
        .find(|(t, _)| *t == Tool::Nothing)
        .map(|(_, s)| (s.attributed_ns_per_frame, s.rate_per_cpu));
    for (tool, s) in &summaries {
        let (counted, loss) = match s.worst_counted {
            Some(c) => (
                thousands(c),
                format!(
                    "{:.2}%",
                    100.0 * (expected as f64 - c as f64) / expected.max(1) as f64
                ),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let (x_own, x_rate) = match base {
            Some((ns, rate)) => (
                format!("{:.2}", s.attributed_ns_per_frame / ns.max(1e-9)),
                format!("{:.2}", rate / s.rate_per_cpu.max(1e-9)),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>7} {:>5} {:>6.3} {:>8.3} {:>6.2} {:>7} {:>7.0} {:>6.0} {:>5} {:>6}",
            tool.label(),
            counted,
            loss,
            thousands(s.worst_link_loss),
            s.rate / 1e6,
            s.rate_per_cpu / 1e6,
            s.machine_s,
            s.tool_s.map_or("-".to_owned(), |t| format!("{t:.3}")),
            s.ns_per_frame,
            s.attributed_ns_per_frame,
            x_own,
            x_rate
        );
    }
    let details: Vec<String> = figures
        .runs
        .iter()
        .flat_map(|(tool, runs)| {
            runs.iter()
                .enumerate()
                .filter(|(_, r)| !r.detail.is_empty())
                .map(move |(i, r)| format!("  {} round {}: {}", tool.label(), i + 1, r.detail))
        })
        .collect();
    if !details.is_empty() {
        let _ = writeln!(out, "\nwhat the tools said:");
        for line in details {
            let _ = writeln!(out, "{line}");
        }
    }

    let _ = writeln!(out, "\ntargets:");
    for line in targets(figures, &summaries) {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str(&scaling::report(&figures.scaling));
    out
}

/// The targets, each met or MISSED, and where a peer beats a capstats hook.
fn targets(figures: &Figures, summaries: &[(Tool, Summary)]) -> Vec<String> {
    let expected = figures.expected();
    let mut lines = Vec::new();
    let get = |tool: Tool| summaries.iter().find(|(t, _)| *t == tool).map(|(_, s)| s);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let Some(rate) = figures.rates.iter().find(|r| r.size == 64) {
        let pps = rate.offered.per_second();
        lines.push(format!(
            "generator offers >= 1 Mpps of 64-byte frames: {:.3} Mpps by the wall clock: {} \
             ({:.3} Mpps per second of its thread's CPU)",
            pps / 1e6,
            verdict(pps >= RATE_TARGET),
            rate.offered.per_cpu_second() / 1e6
        ));
    }
    for hook in [HookName::Socket, HookName::Tc, HookName::Xdp] {
        let tool = Tool::Capstats(hook);
        if let Some(s) = get(tool) {
            let worst = s.worst_counted.unwrap_or(0);
            let mut line = format!(
                "{} counts 100%: {}/{} rounds exact, worst {} of {}: {}",
                tool.label(),
                s.exact_rounds,
                figures.rounds,
                thousands(worst),
                thousands(expected),
                verdict(s.exact_rounds == figures.rounds)
            );
            if s.exact_rounds != figures.rounds && s.worst_link_loss > 0 {
                let _ = write!(
                    line,
                    " (the receiving veth itself missed up to {} frames: lost before any hook)",
                    thousands(s.worst_link_loss)
                );
            }
            lines.push(line);
        }
    }
    let daemon_max = figures
        .runs
        .iter()
        .filter(|(t, _)| matches!(t, Tool::Capstats(_)))
        .flat_map(|(_, runs)| runs.iter().filter_map(|r| r.tool_cpu_ns))
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    lines.push(format!(
        "daemon CPU < {DAEMON_CPU_TARGET_S} s per run: at most {daemon_max:.6} s: {}",
        verdict(daemon_max < DAEMON_CPU_TARGET_S)
    ));
    if let Some(xdp) = get(Tool::Capstats(HookName::Xdp)) {
        for (tool, p) in summaries.iter().filter(|(t, _)| t.uses_libpcap()) {
            lines.push(format!(
                "capstats hook xdp's machine CPU per frame < {}'s: {:.0} vs {:.0} ns: {} \
                 (own CPU: {:.0} vs {:.0} ns: {})",
                tool.label(),
                xdp.ns_per_frame,
                p.ns_per_frame,
                verdict(xdp.ns_per_frame < p.ns_per_frame),
                xdp.attributed_ns_per_frame,
                p.attributed_ns_per_frame,
                verdict(xdp.attributed_ns_per_frame < p.attributed_ns_per_frame),
            ));
        }
    }
    // Where a peer beats a capstats hook: on its own CPU per frame (the figure other
    // users of the machine disturb least), on machine CPU per frame, on the generator's
    // rate per CPU second.
    let mut wins = Vec::new();
    for (peer, p) in summaries.iter().filter(|(t, _)| t.is_peer()) {
        for hook in [HookName::Socket, HookName::Tc, HookName::Xdp] {
            let Some(c) = get(Tool::Capstats(hook)) else {
                continue;
            };
            let label = Tool::Capstats(hook).label();
            let mut on = Vec::new();
            if p.attributed_ns_per_frame < c.attributed_ns_per_frame {
                on.push(format!(
                    "own CPU {:.0} vs {:.0} ns/frame",
                    p.attributed_ns_per_frame, c.attributed_ns_per_frame
                ));
            }
            if p.ns_per_frame < c.ns_per_frame {
                on.push(format!(
                    "machine CPU {:.0} vs {:.0} ns/frame",
                    p.ns_per_frame, c.ns_per_frame
                ));
            }
            if p.rate_per_cpu > c.rate_per_cpu {
                on.push(format!(
                    "generator {:.3} vs {:.3} Mpps/cpu",
                    p.rate_per_cpu / 1e6,
                    c.rate_per_cpu / 1e6
                ));
            }
            if !on.is_empty() {
                wins.push(format!(
                    "{} beats {label} on {}",
                    peer.label(),
                    on.join(", ")
                ));
            }
        }
        if p.exact_rounds == figures.rounds {
            wins.push(format!(
                "{} also counted every matching frame in every round",
                peer.label()
            ));
        }
    }
    if wins.is_empty() {
        lines.push(
            "no peer beats a capstats hook on CPU per frame or rate, none counted exactly"
                .to_owned(),
        );
    } else {
        lines.push("where a peer wins or ties:".to_owned());
        lines.extend(wins.into_iter().map(|w| format!("  {w}")));
    }
    lines
}

/// The comparison for bench/results.json (its `peers` object).
pub fn to_json(figures: &Figures) -> serde_json::Value {
    let tck = clock_ticks_per_second();
    let offered_json = |o: &Offered| {
        json!({
            "frames": o.frames,
            "bytes": o.bytes,
            "per_flow": o.per_flow,
            "calls": o.calls,
            "seconds": o.elapsed.as_secs_f64(),
            "frames_per_second": o.per_second().round(),
            "thread_cpu_ns": o.thread_cpu_ns,
            "off_cpu_ms_per_call": o.waited_per_call().as_secs_f64() * 1e3,
            "frames_per_thread_cpu_second": o.per_cpu_second().round(),
            "program_counted": o.program_counted.0,
        })
    };
    let link_json = |l: &LinkDelta| {
        json!({
            "received": l.received,
            "rx_dropped": l.rx_dropped,
            "sender_tx": l.sent,
            "sender_tx_dropped": l.tx_dropped,
        })
    };
    json!({
        "method": {
            "generator": "BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX out of the sending veth",
            "chunk": loadgen::CHUNK,
            "settle_ms": SETTLE.as_millis() as u64,
            "clock_ticks_per_second": tck,
            "statistic": "medians over rounds; counts: every round kept",
        },
        "expression": figures.expression,
        "frame_bytes": figures.size,
        "flows": figures.flows.iter().zip(&figures.matching).map(|(f, m)| json!({
            "flow": f.description, "matches": m,
        })).collect::<Vec<_>>(),
        "frames_per_run": figures.offered(),
        "expected_per_run": figures.expected(),
        "rounds": figures.rounds,
        "iptables_bytecode": figures.iptables_bytecode,
        "generator_rates": figures.rates.iter().map(|r| json!({
            "frame_bytes": r.size,
            "offered": offered_json(&r.offered),
            "link": link_json(&r.link),
        })).collect::<Vec<_>>(),
        "tools": figures.runs.iter().map(|(tool, runs)| {
            let s = Summary::of(figures, runs);
            json!({
                "tool": tool.label(),
                "command": tool.command(),
                "median_frames_per_second": s.rate.round(),
                "median_machine_cpu_seconds": s.machine_s,
                "median_tool_cpu_seconds": s.tool_s,
                "median_machine_ns_per_frame": s.ns_per_frame.round(),
                "median_frames_per_generator_cpu_second": s.rate_per_cpu.round(),
                "median_own_ns_per_frame": s.attributed_ns_per_frame.round(),
                "worst_counted": s.worst_counted,
                "exact_rounds": s.exact_rounds,
                "runs": runs.iter().map(|r| json!({
                    "offered": offered_json(&r.offered),
                    "counted": r.counted,
                    "tool_cpu_ns": r.tool_cpu_ns,
                    "ksoftirqd_cpu_ns": r.softirqd_ns,
                    "own_cpu_ns": r.attributed_ns(),
                    "machine_ticks": {
                        "busy": r.machine.busy,
                        "idle": r.machine.idle,
                        "user": r.machine.user,
                        "system": r.machine.system,
                        "softirq": r.machine.softirq,
                    },
                    "link": link_json(&r.link),
                    "detail": r.detail,
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "live_cost_of_sessions": scaling::to_json(&figures.scaling),
    })
}

/// `xtask-bench --only-peers`: the comparison alone; its figures replace the `peers`
/// object of `out` (the rest of the file is kept).
pub fn run_alone(
    machine: &Machine,
    options: &Options,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let figures = measure(options)?;
    print!("{}", report(machine, &figures));
    if let Some(out) = out {
        let mut json: serde_json::Value = match std::fs::read_to_string(out) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", out.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
            Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
        };
        json["peers"] = to_json(&figures);
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
        println!("\npeers written to {}", out.display());
    }
    Ok(())
}
