//! The scaling table of shared evaluation: what one packet costs at each hook with 1 to
//! 4,096 sessions of one shape (or four mixed shapes), shared against the layout
//! before it (every filter in turn: tc/xdp chains of 63, socket programs of 32).
//!
//! Each shape's frame runs every filter to its end: it is of the filters' kind but
//! carries none of their constants (`udp and dst port P`: UDP to port 5001, no P is).
//! Filters are compiled as for a capture file (`capstats test`), on every hook: a
//! test run has no socket metadata, so a live `vlan` test would stop at "no tag in
//! metadata" instead of running to its end. BPF_PROG_RUN on the generated program
//! (socket code run as SCHED_CLS, as in the hooks table); the figure is the median ns
//! per run above the hook's empty program. "build ms" is planning, map creation and
//! filling and translation; "load ms" the verifier; their sum is what a change costs
//! when the whole program is regenerated. "new ms" and "stop ms" are what a change
//! made in the maps alone costs, as the daemon makes one that keeps a program's code:
//! one more session of the shape added with a counter map of its own, then stopped
//! (medians of three). Every session's map must have counted
//! nothing (the frame matches none), and the program must return the hook's neutral
//! value. Most of such a frame's cost is skipped by the presence filter (a value no
//! session names costs a bit test, no look-up): "hit ns" is what a frame that session
//! 0 matches costs in the same rounds (its look-up, its branch, its count; shared rows
//! only), and session 0 must have counted every one of those runs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use capstats_ebpf::chain::{CHAIN_SESSIONS, ProgArray, chunk_binding, translate_chunk};
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::MapBinding;
use capstats_ebpf::shared::SharedProgram;
use capstats_ebpf::translate::{CounterSlot, Hook, translate_all};
use serde_json::json;

use crate::frame;
use crate::hooks::Loaded;

/// Sessions per row.
pub const SESSION_COUNTS: [usize; 5] = [1, 64, 256, 1024, 4096];
/// The most sessions the layout before shared evaluation is measured with (tc/xdp
/// chains held at most 2,142).
const MOST_BEFORE: usize = 1024;
const HOOKS: [Hook; 3] = [Hook::Socket, Hook::TcIngress, Hook::Xdp];
/// Socket sessions per program before (a socket's option memory).
const SESSIONS_PER_SOCKET: usize = 32;

/// The session sets measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    UdpDstPort,
    Host,
    Net24,
    Vlan,
    /// udp dst ports, hosts, tcp dst ports and `src net N/16 and udp`, in turn.
    Mixed,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::UdpDstPort,
        Shape::Host,
        Shape::Net24,
        Shape::Vlan,
        Shape::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::UdpDstPort => "udp and dst port P",
            Shape::Host => "host A",
            Shape::Net24 => "net N/24",
            Shape::Vlan => "vlan V",
            Shape::Mixed => "4 mixed shapes",
        }
    }

    /// The shapes to measure: all, or those named (`udp`, `host`, `net`, `vlan`,
    /// `mixed`, comma-separated) in `XTASK_SHARED_SHAPES`, for a targeted run.
    pub fn selected() -> Vec<Shape> {
        let Ok(names) = std::env::var("XTASK_SHARED_SHAPES") else {
            return Self::ALL.to_vec();
        };
        Self::ALL
            .into_iter()
            .filter(|shape| names.split(',').any(|n| n.trim() == shape.key()))
            .collect()
    }

    fn key(self) -> &'static str {
        match self {
            Shape::UdpDstPort => "udp",
            Shape::Host => "host",
            Shape::Net24 => "net",
            Shape::Vlan => "vlan",
            Shape::Mixed => "mixed",
        }
    }

    /// Session `i`'s filter: distinct for every `i` up to 4,096. VLAN ids are 1 to
    /// 4,095 for sessions 0 to 4,094, and session 4,095 has `vlan 0` (libpcap compiles
    /// it to a test that no id is set, another shape: it is a filter alone).
    pub fn filter(self, i: usize) -> String {
        let (hi, lo) = (i >> 8, i & 0xff);
        match self {
            Shape::UdpDstPort => format!("udp and dst port {}", 10_000 + i),
            Shape::Host => format!("host 10.{hi}.{lo}.1"),
            Shape::Net24 => format!("net 10.{hi}.{lo}.0/24"),
            Shape::Vlan => format!("vlan {}", (i + 1) % 4096),
            Shape::Mixed => {
                let k = i / 4;
                let (hi, lo) = (k >> 8, k & 0xff);
                match i % 4 {
                    0 => format!("udp and dst port {}", 10_000 + k),
                    1 => format!("host 10.{hi}.{lo}.1"),
                    2 => format!("tcp dst port {}", 10_000 + k),
                    _ => format!("src net {}.{lo}.0.0/16 and udp", 16 + hi),
                }
            }
        }
    }

    /// A frame of the filters' kind that runs them to their end and matches none of
    /// them but `vlan 0` (4,096 sessions of `vlan V` take every id there is: the frame,
    /// tagged 0, matches session 4,095, which then counts it).
    pub fn frame(self) -> Vec<u8> {
        let udp = frame::udp_ipv4(
            "192.0.2.10:53000".parse().expect("address"),
            "198.51.100.1:5001".parse().expect("address"),
            &[0; 18],
        );
        match self {
            Shape::Vlan => frame::vlan_tagged(&udp, 0),
            _ => udp,
        }
    }

    /// A frame that session 0 matches and no other: the cost of a hit (its value's
    /// look-up, its branch and its count), where [`Shape::frame`] costs what a packet
    /// no session names does.
    pub fn hit_frame(self) -> Vec<u8> {
        let to = |dst: &str| {
            frame::udp_ipv4(
                "192.0.2.10:53000".parse().expect("address"),
                dst.parse().expect("address"),
                &[0; 18],
            )
        };
        match self {
            Shape::UdpDstPort | Shape::Mixed => to("198.51.100.1:10000"),
            Shape::Host | Shape::Net24 => to("10.0.0.1:5001"),
            Shape::Vlan => frame::vlan_tagged(&to("198.51.100.1:5001"), 1),
        }
    }
}

/// One row.
#[derive(Debug)]
struct Row {
    shape: Shape,
    hook: Hook,
    sessions: usize,
    shared: bool,
    programs: usize,
    groups: usize,
    ebpf_insns: usize,
    verified: u64,
    build: Duration,
    load: Duration,
    /// Shared: the median times of a `new` and a `stop` of a session of the shape, made
    /// in the maps alone.
    change: Option<(Duration, Duration)>,
    above_ns: i64,
    /// Shared: the same for [`Shape::hit_frame`], which session 0 counts.
    hit_ns: Option<i64>,
}

/// One row's programs, kept loaded while it is measured.
struct Setup {
    row: Row,
    /// Test-run: the first program of a chain, or each program of the socket layout.
    runs: Vec<Loaded>,
    _others: Vec<Loaded>,
    _chain: Option<ProgArray>,
    _shared: Option<SharedProgram>,
    counters: Vec<CounterMap>,
    frame: Vec<u8>,
    /// Shared rows: [`Shape::hit_frame`], also measured.
    hit_frame: Option<Vec<u8>>,
    empty: usize,
    rounds: Vec<i64>,
    hit_rounds: Vec<i64>,
    /// Runs of the hit frame so far: what session 0 must have counted.
    hits: u64,
}

/// What to measure with.
pub struct Options {
    pub repeat: u32,
    pub rounds: usize,
}

pub struct Figures {
    rows: Vec<Row>,
    repeat: u32,
    rounds: usize,
}

pub fn measure(options: &Options) -> anyhow::Result<Figures> {
    let most = SESSION_COUNTS.iter().copied().max().unwrap_or(1);
    let empties: Vec<Loaded> = HOOKS
        .iter()
        .map(|&h| Loaded::empty(h))
        .collect::<anyhow::Result<_>>()?;
    let mut rows = Vec::new();
    for shape in Shape::selected() {
        eprintln!(
            "shared evaluation: compiling {most} filters of {}",
            shape.name()
        );
        let filters = (0..most)
            .map(|i| Filter::for_linktype(pcap::Linktype::ETHERNET, &shape.filter(i), 0))
            .collect::<Result<Vec<_>, _>>()?;
        let frame = shape.frame();
        let matched: Vec<bool> = filters.iter().map(|f| f.libpcap_matches(&frame)).collect();
        let hit_frame = shape.hit_frame();
        let hit: Vec<usize> = (0..most)
            .filter(|&i| filters[i].libpcap_matches(&hit_frame))
            .collect();
        ensure!(
            hit == [0],
            "{}: the hit frame matches sessions {hit:?}, not session 0 alone",
            shape.name()
        );
        ensure!(
            matched
                .iter()
                .enumerate()
                .all(|(i, &m)| !m || shape.filter(i) == "vlan 0"),
            "{}: the frame matches a filter; it would not run them all to their end",
            shape.name()
        );
        // Measured hook by hook: a row holds a counter map (two fds) per session.
        for (h, &hook) in HOOKS.iter().enumerate() {
            let mut setups = Vec::new();
            for &n in &SESSION_COUNTS {
                for shared in [true, false] {
                    if !shared && n > MOST_BEFORE {
                        continue;
                    }
                    let hit_frame = shared.then_some(&hit_frame[..]);
                    let setup =
                        Setup::build(shape, hook, shared, &filters[..n], &frame, hit_frame, h)
                            .with_context(|| {
                                format!("{} on {hook} with {n} sessions", shape.name())
                            })?;
                    setups.push(setup);
                }
            }
            for setup in &mut setups {
                setup.round(&empties[setup.empty], (options.repeat / 10).max(1), false)?;
            }
            for round in 1..=options.rounds {
                eprintln!(
                    "shared evaluation, {} on {hook}: round {round} of {}",
                    shape.name(),
                    options.rounds
                );
                for setup in &mut setups {
                    setup.round(&empties[setup.empty], options.repeat, true)?;
                }
            }
            for setup in setups {
                rows.push(setup.finish(&matched)?);
            }
        }
    }
    Ok(Figures {
        rows,
        repeat: options.repeat,
        rounds: options.rounds,
    })
}

impl Setup {
    /// The row of the sessions `filters`.
    fn build(
        shape: Shape,
        hook: Hook,
        shared: bool,
        filters: &[Filter],
        frame: &[u8],
        hit_frame: Option<&[u8]>,
        empty: usize,
    ) -> anyhow::Result<Self> {
        let counters = (0..filters.len())
            .map(|i| CounterMap::create(&format!("xtask_sh{i}"), 1))
            .collect::<Result<Vec<_>, _>>()?;
        let counted: Vec<_> = filters
            .iter()
            .zip(&counters)
            .map(|(f, m)| (f.program(), m))
            .collect();
        let (mut runs, mut others, mut chain, mut shared_program) =
            (Vec::new(), Vec::new(), None, None);
        let (mut build, mut load) = (Duration::ZERO, Duration::ZERO);
        let (mut ebpf_insns, mut groups, mut change) = (0, 0, None);
        if shared {
            let start = Instant::now();
            let mut program = SharedProgram::build("xtask_shared", &counted, hook, None)?;
            build += start.elapsed();
            ebpf_insns = program.insns.len();
            groups = program.plan.groups().count();
            let start = Instant::now();
            let maps = program.binding();
            runs.push(Loaded::load(hook, "xtask_shared", &program.insns, &maps)?);
            load += start.elapsed();
            // One session alone is no group: a second one changes the code.
            if counted.len() > 1 {
                change = Some(changes_in_place(&mut program, &counted)?);
            }
            shared_program = Some(program);
        } else if hook == Hook::Socket {
            for group in counted.chunks(SESSIONS_PER_SOCKET) {
                let start = Instant::now();
                let slots: Vec<_> = (0u32..)
                    .zip(group)
                    .map(|(map, (p, _))| (*p, CounterSlot { map, slot: 0 }))
                    .collect();
                let insns = translate_all(&slots, hook)?;
                build += start.elapsed();
                ebpf_insns += insns.len();
                let maps = MapBinding::counters(group.iter().map(|&(_, m)| m));
                let start = Instant::now();
                runs.push(Loaded::load(hook, "xtask_before", &insns, &maps)?);
                load += start.elapsed();
            }
        } else {
            let array = ProgArray::create("xtask_chain")?;
            for (k, group) in counted.chunks(CHAIN_SESSIONS).enumerate() {
                let start = Instant::now();
                let programs: Vec<_> = group.iter().map(|&(p, _)| p).collect();
                let insns = translate_chunk(&programs, hook, k)?;
                build += start.elapsed();
                ebpf_insns += insns.len();
                let maps = chunk_binding(group.iter().map(|&(_, m)| m), &array);
                let start = Instant::now();
                let loaded = Loaded::load(hook, "xtask_chain", &insns, &maps)?;
                load += start.elapsed();
                if k == 0 {
                    runs.push(loaded);
                } else {
                    array.set(k as u32, loaded.program())?;
                    others.push(loaded);
                }
            }
            chain = Some(array);
        }
        let verified = runs.iter().chain(&others).map(Loaded::verified_insns).sum();
        Ok(Self {
            row: Row {
                shape,
                hook,
                sessions: filters.len(),
                shared,
                programs: runs.len() + others.len(),
                groups,
                ebpf_insns,
                verified,
                build,
                load,
                change,
                above_ns: 0,
                hit_ns: None,
            },
            runs,
            _others: others,
            _chain: chain,
            _shared: shared_program,
            counters,
            frame: frame.to_vec(),
            hit_frame: hit_frame.map(<[u8]>::to_vec),
            empty,
            rounds: Vec::new(),
            hit_rounds: Vec::new(),
            hits: 0,
        })
    }

    fn round(&mut self, empty: &Loaded, repeat: u32, keep: bool) -> anyhow::Result<()> {
        let empty_ns = empty.run(&self.frame, repeat)? as i64;
        let mut total = 0;
        for program in &self.runs {
            total += program.run(&self.frame, repeat)? as i64;
        }
        if keep {
            self.rounds.push(total - empty_ns);
        }
        if let Some(hit_frame) = &self.hit_frame {
            let empty_ns = empty.run(hit_frame, repeat)? as i64;
            let mut total = 0;
            for program in &self.runs {
                total += program.run(hit_frame, repeat)? as i64;
            }
            self.hits += u64::from(repeat);
            if keep {
                self.hit_rounds.push(total - empty_ns);
            }
        }
        Ok(())
    }

    /// The row; every session must have counted the frame if libpcap's `matched`
    /// says its filter matches it, else nothing.
    fn finish(mut self, matched: &[bool]) -> anyhow::Result<Row> {
        for (i, map) in self.counters.iter().enumerate() {
            let counted = map.read(0)?;
            if i == 0 && self.hits > 0 {
                ensure!(
                    counted.packets == self.hits,
                    "session 0 counted {} of the {} hit frames it matches",
                    counted.packets,
                    self.hits
                );
            } else if matched[i] {
                ensure!(
                    counted.packets > 0,
                    "session {i} counted none of the frames it matches"
                );
            } else {
                ensure!(
                    counted.packets == 0,
                    "session {i} counted {} packets of a frame its filter does not match",
                    counted.packets
                );
            }
        }
        self.rounds.sort_unstable();
        self.row.above_ns = self.rounds[self.rounds.len() / 2];
        self.hit_rounds.sort_unstable();
        self.row.hit_ns = self.hit_rounds.get(self.hit_rounds.len() / 2).copied();
        Ok(self.row)
    }
}

/// Changes made in the maps alone, as the daemon makes `stop` and `new` of a session
/// of the shape: a session stopped (its dispatch keys removed), then made
/// again with a counter map of its own (its table entry is written, and its keys),
/// three times; each change given the whole set
/// of sessions, as the daemon gives it. The medians of each; every change must be
/// made in place (the code stays the same).
fn changes_in_place(
    program: &mut SharedProgram,
    counted: &[(&capstats_ebpf::cbpf::Program, &CounterMap)],
) -> anyhow::Result<(Duration, Duration)> {
    // A session in the middle: a group's member in every set measured (the last one of
    // 4,096 `vlan V` is `vlan 0`, a filter alone).
    let which = counted.len() / 2;
    let entries: Vec<u32> = (0..counted.len() as u32).collect();
    let without = |set: &[_]| -> (Vec<_>, Vec<u32>) {
        let mut set: Vec<_> = set.to_vec();
        let mut entries = entries.clone();
        set.remove(which);
        entries.remove(which);
        (set, entries)
    };
    let (stopped_set, stopped_entries) = without(counted);
    let (mut added, mut stopped) = (Vec::new(), Vec::new());
    let maps = (0..3)
        .map(|round| CounterMap::create(&format!("xtask_sh_new{round}"), 1))
        .collect::<Result<Vec<_>, _>>()?;
    for map in &maps {
        let mut with: Vec<_> = counted.to_vec();
        with[which].1 = map;
        for (set, entries, times) in [
            (&stopped_set[..], &stopped_entries[..], &mut stopped),
            (&with[..], &entries[..], &mut added),
        ] {
            let start = Instant::now();
            let in_place = program.update_in_place(set, entries)?;
            times.push(start.elapsed());
            ensure!(
                in_place,
                "a session of the shape could not be changed in place"
            );
        }
    }
    // The session's own map back in its entry, for the counters' check.
    ensure!(program.update_in_place(&stopped_set, &stopped_entries)?);
    ensure!(program.update_in_place(counted, &entries)?);
    added.sort_unstable();
    stopped.sort_unstable();
    Ok((added[1], stopped[1]))
}

pub fn report(figures: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Shared evaluation (BPF_PROG_RUN, {} runs per call, median of {} rounds; ns above the \
         hook's empty program; shared = one program, filters of one shape evaluated once; \
         before = every filter in turn, tc/xdp chains of 63, socket programs of 32; ns above \
         is for a frame no session names, which runs every filter to its end; hit ns for one \
         that session 0 counts):",
        figures.repeat, figures.rounds
    );
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:>8} {:<7} {:>8} {:>6} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>6}",
        "sessions of",
        "hook",
        "sessions",
        "layout",
        "programs",
        "groups",
        "eBPF",
        "verified",
        "build ms",
        "load ms",
        "new ms",
        "stop ms",
        "ns above",
        "/session",
        "hit ns"
    );
    for r in &figures.rows {
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:>8} {:<7} {:>8} {:>6} {:>6} {:>9} {:>8.1} {:>7.1} {:>7} {:>7} {:>8} {:>9.2} {:>6}",
            r.shape.name(),
            r.hook.to_string(),
            r.sessions,
            if r.shared { "shared" } else { "before" },
            r.programs,
            r.groups,
            r.ebpf_insns,
            r.verified,
            r.build.as_secs_f64() * 1e3,
            r.load.as_secs_f64() * 1e3,
            r.change.map_or("-".to_owned(), |c| format!(
                "{:.1}",
                c.0.as_secs_f64() * 1e3
            )),
            r.change.map_or("-".to_owned(), |c| format!(
                "{:.1}",
                c.1.as_secs_f64() * 1e3
            )),
            r.above_ns,
            r.above_ns as f64 / r.sessions as f64,
            r.hit_ns.map_or("-".to_owned(), |ns| ns.to_string())
        );
    }
    out
}

pub fn to_json(figures: &Figures) -> serde_json::Value {
    json!({
        "repeat": figures.repeat,
        "rounds": figures.rounds,
        "rows": figures.rows.iter().map(|r| json!({
            "shape": r.shape.name(),
            "hook": r.hook.to_string(),
            "sessions": r.sessions,
            "layout": if r.shared { "shared" } else { "before" },
            "programs": r.programs,
            "groups": r.groups,
            "ebpf_insns": r.ebpf_insns,
            "verified_insns": r.verified,
            "build_ms": r.build.as_secs_f64() * 1e3,
            "load_ms": r.load.as_secs_f64() * 1e3,
            "new_in_place_ms": r.change.map(|c| c.0.as_secs_f64() * 1e3),
            "stop_in_place_ms": r.change.map(|c| c.1.as_secs_f64() * 1e3),
            "ns_above_empty": r.above_ns,
            "hit_ns_above_empty": r.hit_ns,
        })).collect::<Vec<_>>(),
    })
}
