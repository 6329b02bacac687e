//! The third table: what one packet costs at each hook when 1, 8, 64 or 256 sessions
//! count on its interface, each session with its own filter.
//!
//! The daemon runs the sessions of an interface and hook in generated programs of
//! several filters each ("combined"): every session's filter in turn, each counting
//! into its own session's map through a reference to it. tc and xdp chain programs of
//! up to 63 sessions: the first one runs (a test run starts there), each calling the
//! next with `bpf_tail_call`; the socket hook has a socket per 32 sessions. The table
//! measures those programs for each hook, and, for socket and tc, the layout capstats had before ("separate":
//! one program per session, one socket or tcx link each; the kernel runs them all on
//! every packet), with the same generated code, up to 64 sessions (tcx takes 63
//! programs per hook; 256 separate programs would take minutes to measure).
//!
//! A `SOCKET_FILTER` test run hands the program the frame from its network header
//! (the harness pulls the Ethernet header), while a packet socket's filter sees it
//! from the MAC header, so the socket hook's eBPF (translated for `Hook::Socket`)
//! is loaded and run as `SCHED_CLS`, whose test runs start at the MAC header too. What
//! the kernel does per socket besides the filter (the walk of the taps, `deliver_skb`,
//! `packet_rcv`'s preamble) is not in the figure: with the combined layout there is one
//! socket per interface, whatever the number of sessions.
//!
//! Each hook has its own empty program of the same type (`r0 = the hook's neutral
//! return; exit`), run in the same rounds: its time is the harness's per-run cost. A
//! round runs, for each row in turn, the empty program and then the row's programs,
//! `repeat` times each; the figures are medians over the rounds. Every program must
//! return its hook's neutral value, and every session's own counter map must have
//! counted exactly the runs its filter matches (none for the others).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use capstats_ebpf::chain::{CHAIN_SESSIONS, ProgArray, chunk_binding, translate_chunk};
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::insn::Insn;
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::{
    CounterSlot, Hook, empty_program, neutral_return, translate, translate_all,
};
use serde_json::json;

use crate::stats::median;

/// Sessions on the interface, per row.
pub const SESSION_COUNTS: [usize; 4] = [1, 8, 64, 256];
/// Session filters listed in the printed table.
const SHOWN: usize = 30;
/// Socket sessions per socket (a program each), as the daemon groups them: a socket's
/// filter is charged to its option memory (`net.core.optmem_max`).
const SESSIONS_PER_SOCKET: usize = 32;
/// The most sessions measured in the separate layout.
const MOST_SEPARATE: usize = 64;

/// How the sessions of an interface are laid out in programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One program with every session's filter (what the daemon runs).
    Combined,
    /// One program per session (socket and tc, before).
    Separate,
}

impl Layout {
    fn as_str(self) -> &'static str {
        match self {
            Layout::Combined => "combined",
            Layout::Separate => "separate",
        }
    }
}
/// The hooks, in the table's order.
const HOOKS: [Hook; 3] = [Hook::Socket, Hook::TcIngress, Hook::Xdp];
/// Socket and tc filters are compiled as the daemon compiles them, as `tcpdump -i`
/// would on a live interface (VLAN tests read the skb's tag metadata); this one always
/// exists, and compiling opens a capture handle on it but sends nothing.
const COMPILE_IF: &str = "lo";

/// Common UDP services, for the `udp port` sessions.
const UDP_PORTS: [u16; 7] = [53, 123, 161, 514, 1812, 4789, 5353];
/// libpcap's TCP flag names, for the `tcp[tcpflags]` sessions.
const TCP_FLAGS: [&str; 6] = [
    "tcp-syn", "tcp-fin", "tcp-rst", "tcp-push", "tcp-ack", "tcp-urg",
];

/// Session `i`'s filter (0-based): five kinds in turn, each kind's parameter moving on
/// every round of five, so that every session's filter differs from the others'.
pub fn session_filter(i: usize) -> String {
    let k = i / 5;
    match i % 5 {
        0 => format!("host 192.0.2.{}", 10 + k),
        1 => format!("tcp port {}", 80 + k),
        2 => match UDP_PORTS.get(k) {
            Some(port) => format!("udp port {port}"),
            None => format!("udp port {}", 5000 + k),
        },
        3 => format!("vlan {} and udp", 100 + k),
        _ => match TCP_FLAGS.get(k) {
            Some(flag) => format!("tcp[tcpflags] & {flag} != 0"),
            // Past the six flags: each flag again, on its own port.
            None => format!(
                "tcp[tcpflags] & {} != 0 and port {}",
                TCP_FLAGS[k % TCP_FLAGS.len()],
                8000 + k
            ),
        },
    }
}

/// What to measure with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per BPF_PROG_RUN call.
    pub repeat: u32,
    /// Rounds; the medians are reported.
    pub rounds: usize,
    /// The frame every program runs on, and what it is.
    pub frame: Vec<u8>,
    pub frame_description: String,
}

/// One session: its filter and whether the frame matches it (libpcap's verdict).
#[derive(Debug)]
struct Session {
    expression: String,
    matches: bool,
}

/// One row: a hook with N sessions.
#[derive(Debug)]
struct Row {
    hook: Hook,
    layout: Layout,
    sessions: usize,
    /// Programs the kernel runs per packet: N separate; combined, one per 32 socket
    /// sessions, one per 63 tc or xdp sessions (a chain).
    programs: usize,
    /// Test runs per packet: a chain runs from its first program, in one run.
    runs: usize,
    /// eBPF instructions and kernel instruction slots, summed over the programs.
    ebpf_insns: usize,
    ebpf_slots: usize,
    /// Instructions the verifier processed, summed over the programs, and the time
    /// their loads took: what each new/modify/stop costs the daemon again.
    verified_insns: u64,
    load_time: Duration,
    /// The longest load of one program: what one new/modify/stop costs at most where
    /// only the program of the changed session is loaded again (socket, tc, xdp).
    change_time: Duration,
    /// Sessions whose filter matches the frame (and whose counters must show it).
    matched: usize,
    /// Per round: the programs' ns summed, and the empty program's ns.
    total_rounds: Vec<u64>,
    empty_rounds: Vec<u64>,
    /// Median ns of each program on its own.
    program_ns: Vec<u64>,
}

impl Row {
    fn total_ns(&self) -> u64 {
        median(&self.total_rounds)
    }

    fn empty_ns(&self) -> u64 {
        median(&self.empty_rounds)
    }

    /// The programs' own cost: the total less one empty run per test run.
    fn above_ns(&self) -> i64 {
        self.total_ns() as i64 - (self.runs as u64 * self.empty_ns()) as i64
    }

    fn per_session_ns(&self) -> f64 {
        self.above_ns() as f64 / self.sessions as f64
    }
}

/// The table's figures.
#[derive(Debug)]
pub struct Figures {
    options: Options,
    sessions: Vec<Session>,
    rows: Vec<Row>,
}

/// How a program is run: the type it is loaded as.
enum Runner {
    SchedCls(SchedClassifier),
    Xdp(Xdp),
}

/// A program in the kernel, ready for test runs.
pub(crate) struct Loaded {
    /// Keeps the program (the runner has its own reference too).
    program: LoadedProgram,
    runner: Runner,
    /// The hook's neutral return, as the harness reports it.
    expected_return: u32,
}

/// The program type a hook's code is measured as: socket filters as `SCHED_CLS` (their
/// own test runs start at the network header).
pub(crate) fn measured_as(hook: Hook) -> Hook {
    match hook {
        Hook::Xdp => Hook::Xdp,
        Hook::Socket | Hook::TcIngress | Hook::TcEgress => Hook::TcIngress,
    }
}

fn measured_as_name(hook: Hook) -> &'static str {
    match measured_as(hook) {
        Hook::Xdp => "XDP",
        _ => "SCHED_CLS",
    }
}

impl Loaded {
    pub(crate) fn load(
        hook: Hook,
        name: &str,
        insns: &[Insn],
        maps: &MapBinding,
    ) -> anyhow::Result<Self> {
        let program = LoadedProgram::load_with(measured_as(hook), name, insns, maps)?;
        let runner = match measured_as(hook) {
            Hook::Xdp => Runner::Xdp(program.xdp()?),
            _ => Runner::SchedCls(program.sched_classifier()?),
        };
        Ok(Self {
            program,
            runner,
            expected_return: neutral_return(hook) as u32,
        })
    }

    /// `r0 = the hook's neutral return; exit`.
    pub(crate) fn empty(hook: Hook) -> anyhow::Result<Self> {
        Self::load(
            hook,
            "xtask_empty",
            &empty_program(hook),
            &MapBinding::new(),
        )
        .with_context(|| format!("loading the empty program for the {hook} hook"))
    }

    fn slots(&self) -> usize {
        self.program.slots()
    }

    pub(crate) fn program(&self) -> &LoadedProgram {
        &self.program
    }

    pub(crate) fn verified_insns(&self) -> u64 {
        u64::from(self.program.verified_insns())
    }

    /// One BPF_PROG_RUN of `repeat` runs; the kernel's average ns per run.
    pub(crate) fn run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<u64> {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let result = match &self.runner {
            Runner::SchedCls(p) => p.test_run(options),
            Runner::Xdp(p) => p.test_run(options),
        }
        .context("BPF_PROG_RUN")?;
        ensure!(
            result.return_value == self.expected_return,
            "the program returned {} instead of the hook's neutral {}",
            result.return_value as i32,
            self.expected_return as i32
        );
        Ok(result.duration.as_nanos() as u64)
    }
}

/// Measures every hook with every session count.
pub fn measure(options: &Options) -> anyhow::Result<Figures> {
    let most = SESSION_COUNTS.iter().copied().max().unwrap_or(0);
    let sessions = (0..most)
        .map(|i| {
            let expression = session_filter(i);
            // Savefile semantics (tags in the frame): the frame is untagged, so a live
            // handle's tag-metadata test gives the same verdict.
            let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, &expression, 0)?;
            let matches = filter.libpcap_matches(&options.frame);
            Ok(Session {
                expression,
                matches,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        sessions.iter().any(|s| s.matches),
        "the frame matches none of the sessions' filters"
    );

    let mut empties = Vec::new();
    let mut setups = Vec::new();
    for (h, hook) in HOOKS.into_iter().enumerate() {
        empties.push(Loaded::empty(hook)?);
        for layout in [Layout::Combined, Layout::Separate] {
            for &n in &SESSION_COUNTS {
                if layout == Layout::Separate && (hook == Hook::Xdp || n > MOST_SEPARATE) {
                    continue;
                }
                let setup = Setup::build(hook, layout, h, &sessions[..n]).with_context(|| {
                    format!("the {hook} hook with {n} sessions, {}", layout.as_str())
                })?;
                setups.push(setup);
            }
        }
    }

    let frame = &options.frame;
    // Warm caches and branch predictors; not counted.
    let warm_up = (options.repeat / 10).max(1);
    for setup in &mut setups {
        setup.round(&empties[setup.empty], frame, warm_up, false)?;
    }
    // Round after round of every setup, rather than every round of one setup and then
    // the next: a few seconds of disturbance (another process, the host) then spoil
    // a round of each, which the medians leave out, not all the rounds of one.
    for round in 1..=options.rounds {
        eprintln!(
            "measuring hooks: round {round} of {}, {} runs per call",
            options.rounds, options.repeat
        );
        for setup in &mut setups {
            setup.round(&empties[setup.empty], frame, options.repeat, true)?;
        }
    }

    let runs = u64::from(warm_up) + options.rounds as u64 * u64::from(options.repeat);
    let rows = setups
        .into_iter()
        .map(|setup| {
            let (hook, n) = (setup.hook, setup.sessions.len());
            setup
                .finish(runs, frame.len())
                .with_context(|| format!("the {hook} hook with {n} sessions"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Figures {
        options: options.clone(),
        sessions,
        rows,
    })
}

/// One row's programs and counters, and its timings so far.
struct Setup<'a> {
    hook: Hook,
    layout: Layout,
    /// Index of the hook's empty program.
    empty: usize,
    sessions: &'a [Session],
    /// One counter map per session, as the daemon has them.
    counters: Vec<CounterMap>,
    /// tc and xdp combined: the prog array of the chain.
    _chain: Option<ProgArray>,
    programs: Vec<Loaded>,
    /// The first `runs` programs are test-run (a chain: its first).
    runs: usize,
    ebpf_insns: usize,
    load_times: Vec<Duration>,
    total_rounds: Vec<u64>,
    empty_rounds: Vec<u64>,
    program_rounds: Vec<Vec<u64>>,
}

impl<'a> Setup<'a> {
    /// Compiles, translates and loads the sessions' filters as the daemon would for
    /// `hook`, in `layout`.
    fn build(
        hook: Hook,
        layout: Layout,
        empty: usize,
        sessions: &'a [Session],
    ) -> anyhow::Result<Self> {
        let counters = (0..sessions.len())
            .map(|i| CounterMap::create(&format!("xtask_hook{i}"), 1))
            .collect::<Result<Vec<_>, _>>()?;
        let filters = sessions
            .iter()
            .map(|s| match hook {
                Hook::Xdp => Filter::for_xdp(COMPILE_IF, &s.expression),
                _ => Filter::for_interface(COMPILE_IF, &s.expression),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ebpf_insns = 0;
        let mut load_times = Vec::new();
        let mut chain = None;
        let pairs: Vec<_> = filters.iter().zip(&counters).collect();
        let programs = match layout {
            // As the daemon does: the socket hook's sessions in groups of 32, a socket
            // (a program) each, each filter referring to its session's map.
            Layout::Combined if hook == Hook::Socket => {
                let mut programs = Vec::new();
                for group in pairs.chunks(SESSIONS_PER_SOCKET) {
                    let counted: Vec<_> = (0u32..)
                        .zip(group)
                        .map(|(map, (f, _))| (f.program(), CounterSlot { map, slot: 0 }))
                        .collect();
                    let insns = translate_all(&counted, hook)?;
                    ebpf_insns += insns.len();
                    let maps = MapBinding::counters(group.iter().map(|&(_, map)| map));
                    let start = Instant::now();
                    programs.push(Loaded::load(hook, "xtask_combined", &insns, &maps)?);
                    load_times.push(start.elapsed());
                }
                programs
            }
            // tc and xdp: a chain of programs of up to 63 sessions, program k in entry k
            // of the prog array, each calling the next.
            Layout::Combined => {
                let array = ProgArray::create("xtask_chain")?;
                let mut programs = Vec::new();
                for (k, group) in pairs.chunks(CHAIN_SESSIONS).enumerate() {
                    let programs_k: Vec<_> = group.iter().map(|(f, _)| f.program()).collect();
                    let insns = translate_chunk(&programs_k, hook, k)?;
                    ebpf_insns += insns.len();
                    let maps = chunk_binding(group.iter().map(|&(_, map)| map), &array);
                    let start = Instant::now();
                    let loaded = Loaded::load(hook, "xtask_chain", &insns, &maps)?;
                    load_times.push(start.elapsed());
                    if k > 0 {
                        array.set(k as u32, &loaded.program)?;
                    }
                    programs.push(loaded);
                }
                chain = Some(array);
                programs
            }
            Layout::Separate => {
                let mut programs = Vec::new();
                for (f, map) in filters.iter().zip(&counters) {
                    let slot = CounterSlot { map: 0, slot: 0 };
                    let insns = translate(f.program(), hook, slot)?;
                    ebpf_insns += insns.len();
                    let maps = MapBinding::counters([map]);
                    let start = Instant::now();
                    programs.push(
                        Loaded::load(hook, "xtask_hook", &insns, &maps)
                            .with_context(|| format!("loading {:?}", f.expression()))?,
                    );
                    load_times.push(start.elapsed());
                }
                programs
            }
        };
        let runs = match chain {
            Some(_) => 1,
            None => programs.len(),
        };
        Ok(Self {
            hook,
            layout,
            empty,
            sessions,
            counters,
            _chain: chain,
            program_rounds: vec![Vec::new(); runs],
            programs,
            runs,
            ebpf_insns,
            load_times,
            total_rounds: Vec::new(),
            empty_rounds: Vec::new(),
        })
    }

    /// The empty program, then each program, `repeat` runs each; recorded if `keep`.
    fn round(
        &mut self,
        empty: &Loaded,
        frame: &[u8],
        repeat: u32,
        keep: bool,
    ) -> anyhow::Result<()> {
        let empty_ns = empty.run(frame, repeat)?;
        let mut times = Vec::with_capacity(self.runs);
        for program in &self.programs[..self.runs] {
            times.push(program.run(frame, repeat)?);
        }
        if keep {
            self.empty_rounds.push(empty_ns);
            self.total_rounds.push(times.iter().sum());
            for (rounds, ns) in self.program_rounds.iter_mut().zip(times) {
                rounds.push(ns);
            }
        }
        Ok(())
    }

    /// Checks every session's counters after `runs` runs of the frame, and makes the
    /// row.
    fn finish(self, runs: u64, frame_len: usize) -> anyhow::Result<Row> {
        for (session, map) in self.sessions.iter().zip(&self.counters) {
            let counted = map.read(0)?;
            let packets = if session.matches { runs } else { 0 };
            ensure!(
                counted.packets == packets && counted.bytes == packets * frame_len as u64,
                "session {:?} counted packets={} bytes={} in {runs} runs of a {frame_len}-byte \
                 frame it {}; it should count {packets} packets",
                session.expression,
                counted.packets,
                counted.bytes,
                if session.matches {
                    "matches"
                } else {
                    "does not match"
                },
            );
        }
        Ok(Row {
            hook: self.hook,
            layout: self.layout,
            sessions: self.sessions.len(),
            programs: self.programs.len(),
            runs: self.runs,
            ebpf_insns: self.ebpf_insns,
            ebpf_slots: self.programs.iter().map(Loaded::slots).sum(),
            verified_insns: self.programs.iter().map(Loaded::verified_insns).sum(),
            load_time: self.load_times.iter().sum(),
            change_time: self.load_times.iter().copied().max().unwrap_or_default(),
            matched: self.sessions.iter().filter(|s| s.matches).count(),
            total_rounds: self.total_rounds,
            empty_rounds: self.empty_rounds,
            program_ns: self.program_rounds.iter().map(|r| median(r)).collect(),
        })
    }
}

/// The third table of the bench's output.
pub fn report(figures: &Figures) -> String {
    let o = &figures.options;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hooks:   N sessions on one interface, each with its own filter (below), on one {}-byte frame",
        o.frame.len()
    );
    let _ = writeln!(
        out,
        "method:  BPF_PROG_RUN, {} runs per call, median of {} rounds; an empty program of the \
         same type in the same rounds",
        o.repeat, o.rounds
    );
    let _ = writeln!(
        out,
        "columns: layout = combined (programs of many sessions: what capstats runs) or separate \
         (a program per session: before);\n         programs = programs the kernel runs per \
         packet; eBPF = instructions (summed over the programs);\n         verified = \
         instructions the verifier processed, load ms = the loads' time (both summed: a whole \
         build);\n         chg ms = the longest load of one program (combined: what one \
         new/modify/stop costs at most);\n         matched = sessions \
         counting the frame; total, empty, above = ns per packet; above = total - runs x empty \
         (runs: test runs per packet, 1 for a chain);\n         /session = above / sessions\n"
    );
    let _ = writeln!(
        out,
        "{:<7} {:<9} {:>8} {:>8} {:>6} {:>8} {:>7} {:>6} {:>7} {:>8} {:>6} {:>7} {:>8}",
        "hook",
        "layout",
        "sessions",
        "programs",
        "eBPF",
        "verified",
        "load ms",
        "chg ms",
        "matched",
        "total",
        "empty",
        "above",
        "/session"
    );
    for row in &figures.rows {
        let _ = writeln!(
            out,
            "{:<7} {:<9} {:>8} {:>8} {:>6} {:>8} {:>7.1} {:>6.1} {:>7} {:>8} {:>6} {:>7} {:>8.1}",
            row.hook.to_string(),
            row.layout.as_str(),
            row.sessions,
            row.programs,
            row.ebpf_insns,
            row.verified_insns,
            row.load_time.as_secs_f64() * 1e3,
            row.change_time.as_secs_f64() * 1e3,
            row.matched,
            row.total_ns(),
            row.empty_ns(),
            row.above_ns(),
            row.per_session_ns()
        );
    }
    let _ = writeln!(
        out,
        "\nsocket: the socket hook's eBPF run as SCHED_CLS (SOCKET_FILTER test runs start at L3); \
         not included: the\n        kernel's own work per packet socket (tap list walk, \
         deliver_skb, packet_rcv) - one socket per\n        32 sessions when combined, one per \
         session when separate.\n\
         separate: N programs, one BPF_PROG_RUN each; total = their sum, N harness calls included.\n\
         combined: as the daemon lays sessions out: socket, one program per 32 sessions (one run \
         each); tc and xdp,\n          a chain of programs of up to 63 sessions, one run of the \
         first, which tail-calls the next (total = that run);\n          each filter counting \
         into its session's map."
    );
    let _ = writeln!(out, "\nframe: {}", o.frame_description);
    let _ = writeln!(
        out,
        "session filters, in order (the first 1, 8, 64, 256; * = matches the frame; after the \
         first {SHOWN} the pattern goes on,\n  each parameter moving by one; all {} in \
         bench/results.json):",
        figures.sessions.len()
    );
    let shown = &figures.sessions[..SHOWN.min(figures.sessions.len())];
    for (i, s) in shown.iter().enumerate() {
        let cell = format!(
            "{:>3}{} {}",
            i + 1,
            if s.matches { '*' } else { ' ' },
            s.expression
        );
        let _ = if i % 3 == 2 || i + 1 == shown.len() {
            writeln!(out, "  {cell}")
        } else {
            write!(out, "  {cell:<34}")
        };
    }
    out
}

/// The `hooks` object of bench/results.json.
pub fn to_json(figures: &Figures) -> serde_json::Value {
    let o = &figures.options;
    json!({
        "method": {
            "harness": "BPF_PROG_RUN",
            "repeat": o.repeat,
            "rounds": o.rounds,
            "statistic": "median over rounds of the kernel's average ns per run; total_ns: per \
                          round, the sum over the programs",
            "combined": "what the daemon runs, per interface and hook (and tc direction): \
                         socket, one program per group of 32 sessions (a socket each, a run \
                         each); tc and xdp, a chain of programs of up to 63 sessions, the first \
                         test-run, each tail-calling the next (BPF_MAP_TYPE_PROG_ARRAY); each \
                         filter counting into its own session's map",
            "load_ms": "all the programs' loads, summed; change_ms: the longest load of one \
                        program, what one new/modify/stop costs at most",
            "separate": "N programs (one per session), one BPF_PROG_RUN each, summed: the layout \
                         of socket and tc sessions before; up to 64 sessions",
            "socket": "the socket hook's eBPF loaded and run as SCHED_CLS (SOCKET_FILTER test \
                       runs start at L3); the kernel's own per-socket work is not included",
            "empty": "per hook, r0 = the hook's neutral return; exit, loaded as the same type, \
                      run in the same rounds",
            "above_empty_ns": "total_ns - runs * empty_ns (runs: test runs per packet)",
            "compiled": format!(
                "socket, tc: as tcpdump -i {COMPILE_IF} (live semantics); xdp: Filter::for_xdp \
                 (tags in the frame)"
            ),
        },
        "frame": o.frame_description,
        "frame_bytes": o.frame.len(),
        "sessions": figures.sessions.iter().map(|s| json!({
            "filter": s.expression,
            "matches_frame": s.matches,
        })).collect::<Vec<_>>(),
        "results": figures.rows.iter().map(|r| json!({
            "hook": r.hook.to_string(),
            "layout": r.layout.as_str(),
            "sessions": r.sessions,
            "programs": r.programs,
            "runs": r.runs,
            "measured_as": measured_as_name(r.hook),
            "ebpf_insns": r.ebpf_insns,
            "ebpf_slots": r.ebpf_slots,
            "verified_insns": r.verified_insns,
            "load_ms": (r.load_time.as_secs_f64() * 1e4).round() / 10.0,
            "change_ms": (r.change_time.as_secs_f64() * 1e4).round() / 10.0,
            "matched": r.matched,
            "total_ns": r.total_ns(),
            "empty_ns": r.empty_ns(),
            "above_empty_ns": r.above_ns(),
            "per_session_ns": (r.per_session_ns() * 10.0).round() / 10.0,
            "total_ns_rounds": r.total_rounds,
            "empty_ns_rounds": r.empty_rounds,
            "program_ns": r.program_ns,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session's filter differs from the others' and compiles for both semantics;
    /// the frame the bench uses matches a few of them, first among them session 1.
    #[test]
    fn session_filters_are_distinct_and_compile() {
        let most = SESSION_COUNTS.iter().copied().max().unwrap();
        let filters: Vec<String> = (0..most).map(session_filter).collect();
        let mut unique = filters.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), filters.len(), "{filters:?}");
        let frame = crate::http_frame().expect("frame");
        let matching: Vec<usize> = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                Filter::for_linktype(pcap::Linktype::ETHERNET, f, 0)
                    .expect("compiles")
                    .libpcap_matches(&frame)
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(matching, [0, 1, 19, 24], "{filters:?}");
    }
}
