//! Shared evaluation live: what N sessions of one shape cost a frame on the wire, at 1,
//! 64, 256, 1,024 and 4,096 sessions, on every hook, against nothing attached and
//! against nftables (issue 11's scaling table).
//!
//! The sessions. For each shape of the BPF_PROG_RUN table ([`Shape`]: `udp and dst port
//! P`, `host A`, `net N/24`, `vlan V`, and four mixed shapes), session `i` has its own
//! filter and its own counter map. Its program is the daemon's program for those
//! sessions: the same build function the daemon calls (`SharedProgram::build` for a
//! socket, `capstats_ebpf::chain::build_chunk` for chunk 0 of a tc or xdp chain, which
//! is `SharedProgram::build` with the chain's tail call), over filters compiled as the
//! daemon compiles them (socket and tc: on a live libpcap handle on the receiving veth,
//! so `vlan` reads the skb's tag metadata, one handle for all of them, checked against
//! `Filter::for_interface` ([`compile_live`]); xdp: `Filter::for_xdp`). Up to 63 groups
//! (tc, xdp) or 32 (socket) fit one program, so 4,096 sessions of these shapes are one
//! program, as in the daemon. The bench loads it and attaches it itself in the
//! receiving namespace (tcx ingress; XDP native where the veth allows it, generic
//! otherwise; an AF_PACKET socket with the filter attached before it is bound, as the
//! daemon's `attach.rs` does) because creating 4,096 daemon sessions one `new` at a
//! time takes minutes per hook and shape. That the two agree is shown by rows measured
//! through the real daemon ([`scaling::measure_sessions`]): 1, 64 and 256 sessions of
//! `udp and dst port P` made with `new`, on each hook.
//!
//! The stream. One flow from the XDP live-frames generator ([`crate::loadgen`]) into the
//! veth pair: 64-byte frames of the filters' kind that carry none of their constants,
//! so every filter runs to its end (UDP 192.0.2.10:53000 > 198.51.100.1:5001, to the
//! receiving veth's own MAC, from an address in no session's net; for `vlan V` the same
//! frame tagged 802.1Q VLAN 0, which only `vlan 0` matches, session 4,095's (4,096
//! sessions of `vlan V` take every id there is; ids 1 to 4,095 are one group, `vlan 0`
//! is another shape, a filter alone, and counts every frame): the veth moves the tag into
//! the skb's metadata before the socket and tc hooks, where the live filter reads it,
//! and XDP sees it in the frame; it does so in place, in a page the live-frames run
//! recycles, so the generator writes the tag back into every frame,
//! [`Generator::load_rewriting`]). libpcap checks, before anything runs, that no filter
//! matches but `vlan 0` (live `vlan` filters read metadata libpcap's interpreter does not
//! have: the savefile `vlan` filters are checked on the tagged frame instead); after
//! every run every session's counter must still be exactly 0, and `vlan 0`'s must have
//! grown by at most the frames offered and at least one. `XTASK_SHARED_SHAPES` (e.g.
//! `vlan,nft`) measures some rows only: shapes (`udp`, `host`, `net`, `vlan`, `mixed`),
//! `nft` and `daemon`. Sanity rows then offer a matching
//! stream (frames to session 7's port, or tagged with session 7's VLAN) to 256 sessions
//! on each hook: session 7 must count every frame offered, the others none.
//!
//! nftables, the peer the issue names: `udp dport P` for the same ports in a table of
//! the receiving namespace (family ip, prerouting at raw priority, where the peers
//! table's iptables rule sits): linear rules each with a counter at 64 and 256 (what
//! the issue measured), and one rule `counter name udp dport map @ports` with a named
//! counter per port (nft's O(1) way) at 1 to 4,096. Their counters are read after every
//! run: all 0 on the stream, exact on the sanity stream.
//!
//! The meter is the peers table's: the CPU time of the generator thread (the receive
//! path runs in its softirq) and of ksoftirqd, per frame offered. Rounds are
//! interleaved: in each round, nothing attached is measured first for each hook's (and
//! nft's) block of rows; a row's "above" is the median over the rounds of its ns/frame
//! minus that round's nothing attached.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachType};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{SchedClassifier, Xdp, XdpMode};
use capstats_common::protocol::{Direction, HookName};
use capstats_ebpf::cbpf::{Program, RawInsn};
use capstats_ebpf::chain::{ProgArray, build_chunk};
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::{Filter, libpcap_run};
use capstats_ebpf::insn::MapRef;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::SharedProgram;
use capstats_ebpf::translate::{Hook, empty_program};
use serde_json::json;

use super::{LinkCounters, offer, scaling, softirqd_ns, tools};
use crate::daemon::Scratch;
use crate::daemon::netns::{Namespace, Pair, RECV_IF};
use crate::daemon::process::Daemon;
use crate::daemon::report::thousands;
use crate::frame;
use crate::loadgen::{Flow, Generator};
use crate::shared::Shape;

/// Sessions per row.
pub const COUNTS: [usize; 5] = [1, 64, 256, 1024, 4096];
/// Sessions of the rows measured through the daemon (`new` one at a time).
const DAEMON_COUNTS: [usize; 3] = [1, 64, 256];
/// Rules of the linear nftables rows.
const NFT_LINEAR_COUNTS: [usize; 2] = [64, 256];
const HOOKS: [HookName; 3] = [HookName::Socket, HookName::Tc, HookName::Xdp];
/// The sanity rows: this many sessions, and the session the matching stream is for.
const SANITY_SESSIONS: usize = 256;
const SANITY_MEMBER: usize = 7;
/// The stream's destination port (no session's: theirs are 10,000 and up) and VLAN:
/// 0, no id, which only session 4,095 of `vlan V` names (`vlan 0`; the others have 1
/// to 4,095): 4,096 sessions take every id there is.
const STREAM_PORT: u16 = 5001;
const STREAM_VLAN: u16 = 0;
/// After the last frame, before the counters and ksoftirqd's time are read.
const SETTLE: Duration = Duration::from_millis(50);
/// Where the daemon of the daemon rows serves `/metrics` (its namespace's loopback).
const METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9479);
/// The nftables table of the peer rows, in the receiving namespace.
const NFT_TABLE: &str = "xtask_live";
/// The targets: above nothing, as a share of nothing's own ns/frame, at 256
/// sessions; and the growth from 256 to 4,096 sessions: log 4,096 / log 256 = 1.5.
const ONE_SHAPE_TARGET: f64 = 0.25;
const MIXED_TARGET: f64 = 0.50;
const LOG_GROWTH: f64 = 1.5;
/// "1 session no dearer than today": what one session cost above nothing attached
/// before shared evaluation, per hook, on this meter (the table: each session's
/// own program, as the peers table attaches it).
const ONE_SESSION_BEFORE: [(HookName, f64); 3] = [
    (HookName::Socket, 30.0),
    (HookName::Tc, 10.0),
    (HookName::Xdp, 10.0),
];

/// What to measure with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `capstats` binary (a release build), for the daemon rows.
    pub capstats: PathBuf,
    /// Frames offered per run.
    pub frames: u64,
    /// Rounds; medians are reported.
    pub rounds: usize,
}

/// Who counts in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Nothing,
    /// The hook's empty program (the neutral verdict, no filter, no counter): what the
    /// hook itself costs a frame, the floor under every row of the hook.
    Empty(HookName),
    /// The daemon's program for the sessions, attached by the bench.
    Direct(HookName),
    /// Sessions made through the daemon (`new`).
    Daemon(HookName),
    /// `udp dport P counter`, one rule per port.
    NftLinear,
    /// `counter name udp dport map @ports`, a named counter per port.
    NftMap,
}

impl Tool {
    fn label(self) -> String {
        match self {
            Tool::Nothing => "nothing attached".to_owned(),
            Tool::Empty(hook) => format!("{} empty", hook.as_str()),
            Tool::Direct(hook) => hook.as_str().to_owned(),
            Tool::Daemon(hook) => format!("{} (daemon)", hook.as_str()),
            Tool::NftLinear => "nft rules".to_owned(),
            Tool::NftMap => "nft counter map".to_owned(),
        }
    }
}

/// One row: a tool with N sessions on one stream.
#[derive(Debug)]
pub struct Row {
    pub shape: &'static str,
    pub tool: Tool,
    pub sessions: usize,
    /// Groups of filters evaluated together in the program (capstats rows).
    pub groups: Option<usize>,
    /// Per round: CPU ns per frame offered (generator thread and ksoftirqd).
    pub ns: Vec<f64>,
    /// Per round: nothing attached's ns per frame in the same block.
    pub base: Vec<f64>,
    /// Per round: ns - nothing attached's (the daemon rows: - the median of the
    /// daemon block's nothing attached, measured before each hook's rows).
    pub above: Vec<f64>,
    /// Frames the receiving veth did not receive, worst run.
    pub lost: u64,
    /// How the XDP program was attached (native or generic).
    pub mode: Option<&'static str>,
}

impl Row {
    /// A row with nothing measured yet.
    fn new(shape: &'static str, tool: Tool, sessions: usize, groups: Option<usize>) -> Self {
        Row {
            shape,
            tool,
            sessions,
            groups,
            ns: Vec::new(),
            base: Vec::new(),
            above: Vec::new(),
            lost: 0,
            mode: None,
        }
    }

    fn above(&self) -> f64 {
        median_f64(&self.above)
    }

    fn base(&self) -> f64 {
        median_f64(&self.base)
    }

    fn share(&self) -> f64 {
        self.above() / self.base().max(1e-9)
    }

    /// The spread of nothing attached over the rounds: what the rounds' noise is.
    fn noise(&self) -> f64 {
        let max = self.base.iter().copied().fold(f64::MIN, f64::max);
        let min = self.base.iter().copied().fold(f64::MAX, f64::min);
        (max - min).max(0.0)
    }
}

/// A matching stream counted: one sanity row.
#[derive(Debug)]
pub struct Sanity {
    pub what: String,
    pub tool: Tool,
    pub sessions: usize,
    pub offered: u64,
    pub lost: u64,
    /// What session [`SANITY_MEMBER`] counted, and how many others counted anything.
    pub counted: u64,
    pub others: usize,
}

impl Sanity {
    /// Session [`SANITY_MEMBER`] counted every frame that reached the hooks (the
    /// frames the receiving link dropped before them, counted by its own counters,
    /// reach no hook and no rule), and no other session counted anything.
    fn exact(&self) -> bool {
        self.counted + self.lost == self.offered && self.others == 0
    }
}

/// Everything the table measured.
#[derive(Debug)]
pub struct Figures {
    pub frames: u64,
    pub rounds: usize,
    /// Per stream: what it is.
    pub streams: Vec<(&'static str, String)>,
    /// libpcap's live program of `vlan 1` on the receiving veth, `tcpdump -d` style.
    pub live_vlan: String,
    pub rows: Vec<Row>,
    pub sanity: Vec<Sanity>,
}

/// Whether every sanity row counted exactly.
pub fn exact(figures: &Figures) -> bool {
    figures.sanity.iter().all(Sanity::exact)
}

/// The middle value; of an even count, the mean of the two middle ones; 0 of none.
fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A 64-byte UDP frame to `port` from an address in no session's net.
fn udp_frame(port: u16) -> Vec<u8> {
    frame::udp_ipv4(
        std::net::SocketAddrV4::new([192, 0, 2, 10].into(), 53000),
        std::net::SocketAddrV4::new([198, 51, 100, 1].into(), port),
        &[0x5a; 22],
    )
}

/// A 64-byte 802.1Q-tagged UDP frame (tag included) to port 5001 on VLAN `vid`.
fn vlan_frame(vid: u16) -> Vec<u8> {
    let udp = frame::udp_ipv4(
        std::net::SocketAddrV4::new([192, 0, 2, 10].into(), 53000),
        std::net::SocketAddrV4::new([198, 51, 100, 1].into(), STREAM_PORT),
        &[0x5a; 18],
    );
    frame::vlan_tagged(&udp, vid)
}

/// The stream offered to `shape`'s sessions: it matches none of them.
fn stream(shape: Shape) -> Flow {
    match shape {
        Shape::Vlan => Flow {
            description: format!(
                "802.1Q VLAN {STREAM_VLAN}, UDP 192.0.2.10:53000 > 198.51.100.1:{STREAM_PORT}"
            ),
            frame: vlan_frame(STREAM_VLAN),
        },
        _ => Flow {
            description: format!("UDP 192.0.2.10:53000 > 198.51.100.1:{STREAM_PORT}"),
            frame: udp_frame(STREAM_PORT),
        },
    }
}

/// The sanity stream of `shape`: it matches session [`SANITY_MEMBER`] only.
fn matching_stream(shape: Shape) -> Option<Flow> {
    let port = 10_000 + SANITY_MEMBER as u16;
    match shape {
        Shape::UdpDstPort => Some(Flow {
            description: format!("UDP 192.0.2.10:53000 > 198.51.100.1:{port}"),
            frame: udp_frame(port),
        }),
        Shape::Vlan => {
            let vid = SANITY_MEMBER as u16 + 1;
            Some(Flow {
                description: format!("802.1Q VLAN {vid}, UDP to port {STREAM_PORT}"),
                frame: vlan_frame(vid),
            })
        }
        _ => None,
    }
}

/// The pair and the generator every run uses.
struct Bench<'a> {
    pair: &'a Pair,
    generator: &'a Generator,
    frames: u64,
    /// When the table started, for the progress lines.
    start: Instant,
}

/// One run's figures.
struct Ran {
    ns_per_frame: f64,
    offered: u64,
    lost: u64,
}

impl<'a> Bench<'a> {
    /// This bench, or for a tagged `flow` one whose generator writes the tag back into
    /// every frame ([`Generator::load_rewriting`]: the receiving veth takes it out of
    /// the recycled frame in place). `own` keeps that generator.
    fn for_flow(&self, flow: &Flow, own: &'a mut Option<Generator>) -> anyhow::Result<Bench<'a>> {
        let mut bench = Bench {
            pair: self.pair,
            generator: self.generator,
            frames: self.frames,
            start: self.start,
        };
        if flow.frame[12..14] == [0x81, 0x00] {
            // Destination and source MAC, the tag: the bytes the untagging moves.
            bench.generator = own.insert(Generator::load_rewriting(&flow.frame[..16])?);
        }
        Ok(bench)
    }

    /// A progress line, with the seconds since the table started.
    fn say(&self, what: std::fmt::Arguments) {
        eprintln!(
            "live shared [{:>4} s]: {what}",
            self.start.elapsed().as_secs()
        );
    }

    /// Attaches `program` at `hook`, runs `flow`, takes the program off, and adds the
    /// run to `row` against nothing attached's `base` ns/frame of the same round.
    fn run_attached(
        &self,
        flow: &Flow,
        hook: HookName,
        program: &LoadedProgram,
        base: f64,
        row: &mut Row,
    ) -> anyhow::Result<Ran> {
        let attached = Attached::new(&self.pair.receiver, hook, program).context("attaching")?;
        row.mode = attached.mode();
        let ran = self.run(flow);
        attached.detach()?;
        let ran = ran?;
        row.ns.push(ran.ns_per_frame);
        row.base.push(base);
        row.above.push(ran.ns_per_frame - base);
        row.lost = row.lost.max(ran.lost);
        Ok(ran)
    }

    fn run(&self, flow: &Flow) -> anyhow::Result<Ran> {
        let link = LinkCounters::read(self.pair)?;
        let softirqd = softirqd_ns();
        let offered = offer(
            self.pair,
            self.generator,
            std::slice::from_ref(flow),
            self.frames,
        )?;
        std::thread::sleep(SETTLE);
        let ns = offered.thread_cpu_ns + softirqd_ns().saturating_sub(softirqd);
        let received = LinkCounters::read(self.pair)?.since(&link).received;
        Ok(Ran {
            ns_per_frame: ns as f64 / offered.frames.max(1) as f64,
            offered: offered.frames,
            lost: offered.frames.saturating_sub(received),
        })
    }
}

/// Measures the table; the namespaces, programs, daemon and rules are gone when it
/// returns, also on error.
pub fn measure(options: &Options) -> anyhow::Result<Figures> {
    ensure!(
        options.rounds > 0 && options.frames > 0,
        "the live shared table needs at least one round and one frame"
    );
    let capstats = options
        .capstats
        .canonicalize()
        .with_context(|| format!("no capstats binary at {}", options.capstats.display()))?;
    let pair = Pair::create(frame::SRC_MAC, frame::DST_MAC)?;
    // NAPI on the receiving veth, or XDP_TX frames vanish (see the peers table).
    tools::ethtool(&pair.receiver, &["-K", RECV_IF, "gro", "on"])?;
    let generator = Generator::load()?;
    let bench = Bench {
        pair: &pair,
        generator: &generator,
        frames: options.frames,
        start: Instant::now(),
    };
    let mut figures = Figures {
        frames: options.frames,
        rounds: options.rounds,
        streams: Vec::new(),
        live_vlan: live_program(&pair.receiver, "vlan 1")?,
        rows: Vec::new(),
        sanity: Vec::new(),
    };
    for shape in Shape::selected() {
        measure_shape(&bench, shape, options.rounds, &mut figures)
            .with_context(|| format!("sessions of {}", shape.name()))?;
    }
    if selected("nft") {
        measure_nft(&bench, options.rounds, &mut figures).context("the nftables rows")?;
    }
    if selected("daemon") {
        measure_daemon(&bench, &capstats, options.rounds, &mut figures)
            .context("the rows through the daemon")?;
    }
    Ok(figures)
}

/// Whether the rows named `key` are measured: always, unless `XTASK_SHARED_SHAPES`
/// names the parts of a targeted run (`nft`, `daemon` beside the shapes' names).
fn selected(key: &str) -> bool {
    std::env::var("XTASK_SHARED_SHAPES")
        .map_or(true, |names| names.split(',').any(|n| n.trim() == key))
}

/// Whether session `i` of a shape's stream matches it: only `vlan 0`.
fn stream_matches(expression: &str) -> bool {
    expression == "vlan 0"
}

/// `expression` compiled as the daemon compiles it for the socket and tc hooks, in
/// `tcpdump -dd` style.
fn live_program(ns: &Namespace, expression: &str) -> anyhow::Result<String> {
    let filter = ns.run(|| Ok(Filter::for_interface(RECV_IF, expression)?))?;
    Ok(filter
        .raw()
        .iter()
        .map(|i| format!("{{ {:#04x}, {}, {}, {:#x} }}", i.code, i.jt, i.jf, i.k))
        .collect::<Vec<_>>()
        .join("; "))
}

/// The daemon's program for the first `maps.len()` sessions at `hook`, loaded.
struct Built {
    hook: HookName,
    sessions: usize,
    groups: usize,
    program: LoadedProgram,
    _shared: SharedProgram,
    _chain: Option<ProgArray>,
}

fn build(hook: HookName, filters: &[Program], maps: &[CounterMap]) -> anyhow::Result<Built> {
    let counted: Vec<_> = filters.iter().zip(maps).collect();
    let (shared, chain, ebpf_hook) = match hook {
        HookName::Socket => (
            SharedProgram::build("xls", &counted, Hook::Socket, None)?,
            None,
            Hook::Socket,
        ),
        HookName::Tc | HookName::Xdp => {
            let ebpf_hook = ebpf_hook(hook);
            let chain = ProgArray::create("xls_chain")?;
            let entries: Vec<u32> = (0..counted.len() as u32).collect();
            let shared = build_chunk("xls", &counted, &entries, ebpf_hook, 0)?;
            (shared, Some(chain), ebpf_hook)
        }
    };
    let mut maps = shared.binding();
    if let Some(chain) = &chain {
        maps = maps.bind(MapRef::ProgArray, chain);
    }
    let program = LoadedProgram::load_with(ebpf_hook, "xtask_live", &shared.insns, &maps)
        .with_context(|| format!("loading {} sessions for {}", filters.len(), hook.as_str()))?;
    Ok(Built {
        hook,
        sessions: filters.len(),
        groups: shared.plan.groups().count(),
        program,
        _shared: shared,
        _chain: chain,
    })
}

/// Where the bench attaches a hook name's program (tc: ingress, the receiving side).
fn ebpf_hook(hook: HookName) -> Hook {
    Hook::of(hook, Direction::In)[0]
}

/// A program attached in the receiving namespace; [`Attached::detach`] takes it off.
enum Attached {
    /// The counting socket: closing it detaches the filter.
    Socket(OwnedFd),
    Tc(SchedClassifier, SchedClassifierLinkId),
    Xdp(Xdp, XdpLinkId, &'static str),
}

impl Attached {
    fn new(ns: &Namespace, hook: HookName, program: &LoadedProgram) -> anyhow::Result<Self> {
        ns.run(|| match hook {
            HookName::Socket => {
                // SAFETY: plain calls; the fd is owned from here.
                let fd = unsafe {
                    libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
                };
                if fd < 0 {
                    bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
                }
                let socket = unsafe { OwnedFd::from_raw_fd(fd) };
                // As the daemon's: the filter queues nothing, the buffer is minimal.
                let size: libc::c_int = 0;
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&socket),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        (&size as *const libc::c_int).cast(),
                        size_of::<libc::c_int>() as u32,
                    )
                };
                // The filter first, so that no packet passes unfiltered; then bind.
                program
                    .socket_filter()?
                    .attach(socket.as_fd())
                    .context("SO_ATTACH_BPF")?;
                let name = std::ffi::CString::new(RECV_IF)?;
                // SAFETY: a NUL-terminated name; a zeroed sockaddr_ll filled below.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                addr.sll_ifindex = ifindex as i32;
                let rc = unsafe {
                    libc::bind(
                        std::os::fd::AsRawFd::as_raw_fd(&socket),
                        (&addr as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc != 0 {
                    bail!(
                        "binding the socket to {RECV_IF}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(Attached::Socket(socket))
            }
            HookName::Tc => {
                let mut classifier = program.sched_classifier()?;
                let id = classifier
                    .attach(RECV_IF, TcAttachType::Ingress)
                    .context("tcx attach, ingress")?;
                Ok(Attached::Tc(classifier, id))
            }
            HookName::Xdp => {
                let mut xdp = program.xdp()?;
                let mut tried = Vec::new();
                for (mode, flags) in [("native", XdpMode::Driver), ("generic", XdpMode::Skb)] {
                    match xdp.attach(RECV_IF, flags) {
                        Ok(id) => return Ok(Attached::Xdp(xdp, id, mode)),
                        Err(e) => tried.push(format!("{mode}: {e}")),
                    }
                }
                bail!("cannot attach XDP: {}", tried.join("; "))
            }
        })
    }

    fn mode(&self) -> Option<&'static str> {
        match self {
            Attached::Xdp(_, _, mode) => Some(mode),
            _ => None,
        }
    }

    fn detach(self) -> anyhow::Result<()> {
        match self {
            Attached::Socket(socket) => drop(socket),
            Attached::Tc(mut classifier, id) => classifier.detach(id)?,
            Attached::Xdp(mut xdp, id, _) => xdp.detach(id)?,
        }
        Ok(())
    }
}

/// Packets each map counted so far.
fn packets(maps: &[CounterMap]) -> anyhow::Result<Vec<u64>> {
    maps.iter()
        .map(|m| Ok(m.read(0)?.packets))
        .collect::<anyhow::Result<_>>()
}

/// Filters compiled for the socket and tc hooks, as the daemon compiles them.
struct Live {
    raw: Vec<Vec<RawInsn>>,
    programs: Vec<Program>,
}

/// `expressions` compiled on one live libpcap handle on the receiving veth (call it in
/// the receiving namespace), and checked against `frame`: none may match. The daemon
/// compiles with `Filter::for_interface`, which opens a handle per expression (an RCU
/// grace period each, seconds for thousands of filters on a busy machine): the first and
/// the last expression are compiled that way too and must come out the same.
fn compile_live(expressions: &[String], frame: &[u8]) -> anyhow::Result<Live> {
    let capture = pcap::Capture::from_device(RECV_IF)?
        .snaplen(capstats_ebpf::filter::SNAPLEN)
        .buffer_size(1 << 16)
        .timeout(1)
        .open()
        .with_context(|| format!("opening a live handle on {RECV_IF}"))?;
    // pcap's `compile` passes netmask 0; the daemon passes the interface's, also 0 here
    // (the veth has no address), and no shape's code depends on it.
    let mut live = Live {
        raw: Vec::new(),
        programs: Vec::new(),
    };
    for expression in expressions {
        let compiled = capture
            .compile(expression, true)
            .with_context(|| format!("compiling {expression:?} on {RECV_IF}"))?;
        let raw = compiled
            .get_instructions()
            .iter()
            .map(|insn| {
                let fields: Vec<u32> = insn
                    .to_string()
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                match fields[..] {
                    [code, jt, jf, k] => Ok(RawInsn::new(code as u16, jt as u8, jf as u8, k)),
                    _ => bail!("libpcap instruction {insn} is not `code jt jf k`"),
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(
            stream_matches(expression) || libpcap_run(&raw, frame) == Some(0),
            "libpcap says {expression:?} (live) matches the stream: it would not run every \
             filter to its end"
        );
        live.programs.push(Program::new(&raw)?);
        live.raw.push(raw);
    }
    for i in [0, expressions.len() - 1] {
        let daemon = Filter::for_interface(RECV_IF, &expressions[i])?;
        ensure!(
            daemon.raw() == live.raw[i].as_slice(),
            "{:?}: the single live handle compiled another program than the daemon's \
             Filter::for_interface",
            expressions[i]
        );
    }
    Ok(live)
}

fn measure_shape(
    bench: &Bench,
    shape: Shape,
    rounds: usize,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let most = COUNTS.iter().copied().max().unwrap_or(1);
    let flow = stream(shape);
    let mut own = None;
    let bench = &bench.for_flow(&flow, &mut own)?;
    figures
        .streams
        .push((shape.name(), flow.description.clone()));
    bench.say(format_args!(
        "compiling {most} filters of {} (live and xdp)",
        shape.name()
    ));
    let expressions: Vec<String> = (0..most).map(|i| shape.filter(i)).collect();
    let frame = flow.frame.clone();
    let (live, xdp) = bench.pair.receiver.run(|| {
        let live = compile_live(&expressions, &frame)?;
        let xdp = expressions
            .iter()
            .map(|e| Filter::for_xdp(RECV_IF, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((live, xdp))
    })?;
    if let Some(f) = xdp
        .iter()
        .find(|f| f.libpcap_matches(&flow.frame) != stream_matches(f.expression()))
    {
        bail!(
            "libpcap says {:?} matches the stream ({}) (only `vlan 0` should): it would not run \
             every filter to its end",
            f.expression(),
            flow.description
        );
    }
    let xdp_raw: Vec<Vec<RawInsn>> = xdp.iter().map(|f| f.raw().to_vec()).collect();
    let xdp: Vec<Program> = xdp.iter().map(|f| f.program().clone()).collect();
    let maps = (0..most)
        .map(|i| CounterMap::create(&format!("xls{i}"), 1))
        .collect::<Result<Vec<_>, _>>()?;
    bench.say(format_args!(
        "building and loading {} programs of {}",
        HOOKS.len() * COUNTS.len(),
        shape.name()
    ));
    let mut built = Vec::new();
    for hook in HOOKS {
        let filters = if hook == HookName::Xdp {
            &xdp
        } else {
            &live.programs
        };
        for &n in &COUNTS {
            built.push(build(hook, &filters[..n], &maps[..n])?);
        }
    }
    let mut rows: Vec<Row> = built
        .iter()
        .map(|b| {
            Row::new(
                shape.name(),
                Tool::Direct(b.hook),
                b.sessions,
                Some(b.groups),
            )
        })
        .collect();
    let mut nothing = Row::new(shape.name(), Tool::Nothing, 0, None);
    let mut empties: Vec<(Row, LoadedProgram)> = HOOKS
        .iter()
        .map(|&hook| {
            let ebpf_hook = ebpf_hook(hook);
            let program = LoadedProgram::load(ebpf_hook, "xtask_empty", &empty_program(ebpf_hook))?;
            Ok((Row::new(shape.name(), Tool::Empty(hook), 0, None), program))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut matched_before = vec![0u64; most];
    for round in 1..=rounds {
        for hook in HOOKS {
            bench.say(format_args!(
                "{}, {}, round {round}/{rounds}",
                shape.name(),
                hook.as_str()
            ));
            let base = bench.run(&flow)?;
            nothing.ns.push(base.ns_per_frame);
            nothing.lost = nothing.lost.max(base.lost);
            for (row, empty) in empties
                .iter_mut()
                .filter(|(r, _)| r.tool == Tool::Empty(hook))
            {
                bench
                    .run_attached(&flow, hook, empty, base.ns_per_frame, row)
                    .with_context(|| format!("the empty program at {}", hook.as_str()))?;
            }
            for (b, row) in built.iter().zip(&mut rows).filter(|(b, _)| b.hook == hook) {
                let ran = bench
                    .run_attached(&flow, hook, &b.program, base.ns_per_frame, row)
                    .with_context(|| format!("{} sessions at {}", b.sessions, hook.as_str()))?;
                let counted = packets(&maps[..b.sessions])?;
                // `vlan 0` counts every frame that arrives, over the rows it is in.
                for (i, &n) in counted.iter().enumerate() {
                    if stream_matches(&expressions[i]) {
                        let more = n - matched_before[i];
                        ensure!(
                            more > 0 && more <= ran.offered,
                            "{} sessions at {}: session {i} ({}) counted {more} of {} frames it \
                             matches",
                            b.sessions,
                            hook.as_str(),
                            expressions[i],
                            ran.offered
                        );
                        matched_before[i] = n;
                    }
                }
                if let Some((i, n)) = counted
                    .iter()
                    .enumerate()
                    .find(|&(i, n)| *n != 0 && !stream_matches(&expressions[i]))
                {
                    bail!(
                        "{} sessions at {}: session {i} ({}) counted {n} frames of a stream \
                         its filter does not match",
                        b.sessions,
                        hook.as_str(),
                        shape.filter(i)
                    );
                }
            }
        }
    }
    if let Some(matching) = matching_stream(shape) {
        // libpcap: the sanity stream matches session 7 and no other of the first 256
        // (live `vlan` filters read metadata its interpreter lacks: the xdp ones say).
        let mut checks: Vec<Vec<&[RawInsn]>> = vec![
            (0..SANITY_SESSIONS)
                .map(|i| xdp_raw[i].as_slice())
                .collect(),
        ];
        if shape != Shape::Vlan {
            checks.push(
                live.raw[..SANITY_SESSIONS]
                    .iter()
                    .map(Vec::as_slice)
                    .collect(),
            );
        }
        for raw in checks {
            let matched: Vec<usize> = raw
                .iter()
                .enumerate()
                .filter(|(_, r)| libpcap_run(r, &matching.frame).is_some_and(|v| v != 0))
                .map(|(i, _)| i)
                .collect();
            ensure!(
                matched == [SANITY_MEMBER],
                "libpcap matches sessions {matched:?} with the sanity stream {}, not only {SANITY_MEMBER}",
                matching.description
            );
        }
        let mut own = None;
        let sanity_bench = bench.for_flow(&matching, &mut own)?;
        for b in built.iter().filter(|b| b.sessions == SANITY_SESSIONS) {
            let before = packets(&maps[..b.sessions])?;
            let attached = Attached::new(&bench.pair.receiver, b.hook, &b.program)?;
            let ran = sanity_bench.run(&matching);
            attached.detach()?;
            let ran = ran?;
            let after = packets(&maps[..b.sessions])?;
            let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            figures.sanity.push(Sanity {
                what: format!("{}: {}", shape.name(), matching.description),
                tool: Tool::Direct(b.hook),
                sessions: b.sessions,
                offered: ran.offered,
                lost: ran.lost,
                counted: delta[SANITY_MEMBER],
                others: delta
                    .iter()
                    .enumerate()
                    .filter(|&(i, &n)| i != SANITY_MEMBER && n != 0)
                    .count(),
            });
        }
    }
    figures.rows.push(nothing);
    figures.rows.extend(empties.into_iter().map(|(row, _)| row));
    figures.rows.extend(rows);
    Ok(())
}

/// An nftables table in the receiving namespace counting `udp dport P` for the first
/// `n` sessions' ports.
fn nft_ruleset(tool: Tool, n: usize) -> String {
    let port = |i: usize| 10_000 + i;
    let chain_head =
        "  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n";
    let mut text = format!("table ip {NFT_TABLE} {{\n");
    if tool == Tool::NftLinear {
        text.push_str(chain_head);
        for i in 0..n {
            let _ = writeln!(text, "    udp dport {} counter", port(i));
        }
        text.push_str("  }\n");
    } else {
        for i in 0..n {
            let _ = writeln!(text, "  counter c{} {{ }}", port(i));
        }
        let elements: Vec<String> = (0..n)
            .map(|i| format!("{} : \"c{}\"", port(i), port(i)))
            .collect();
        let _ = writeln!(
            text,
            "  map ports {{\n    type inet_service : counter\n    elements = {{ {} }}\n  }}",
            elements.join(", ")
        );
        text.push_str(chain_head);
        text.push_str("    counter name udp dport map @ports\n  }\n");
    }
    text.push_str("}\n");
    text
}

/// `nft ARGS...` in `ns` with `input` on its standard input, checked; its output.
fn nft(ns: &Namespace, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = ns
        .command(Path::new("nft"))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`nft {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packets of the table's counters: the named counters by name (`cP`), else each
/// rule's counter in rule order.
fn nft_counters(ns: &Namespace) -> anyhow::Result<Vec<(String, u64)>> {
    let text = nft(ns, &["-j", "list", "table", "ip", NFT_TABLE], None)?;
    let value: serde_json::Value = serde_json::from_str(&text).context("nft -j output")?;
    let items = value["nftables"]
        .as_array()
        .context("no nftables array in `nft -j list table`")?;
    let mut counters = Vec::new();
    for item in items {
        if let Some(name) = item["counter"]["name"].as_str() {
            let packets = item["counter"]["packets"]
                .as_u64()
                .with_context(|| format!("counter {name} without packets"))?;
            counters.push((name.to_owned(), packets));
        } else if let Some(exprs) = item["rule"]["expr"].as_array() {
            for expr in exprs {
                if let Some(packets) = expr["counter"]["packets"].as_u64() {
                    counters.push((format!("rule {}", counters.len()), packets));
                }
            }
        }
    }
    Ok(counters)
}

/// Loads the table, runs `flow`, reads the counters and deletes the table again.
fn nft_run(
    bench: &Bench,
    tool: Tool,
    n: usize,
    flow: &Flow,
) -> anyhow::Result<(Ran, Vec<(String, u64)>)> {
    let ns = &bench.pair.receiver;
    nft(ns, &["-f", "-"], Some(&nft_ruleset(tool, n)))?;
    let ran = bench.run(flow);
    let counters = nft_counters(ns);
    nft(ns, &["delete", "table", "ip", NFT_TABLE], None)?;
    let (ran, counters) = (ran?, counters?);
    ensure!(
        counters.len() == n,
        "{} with {n} ports lists {} counters",
        tool.label(),
        counters.len()
    );
    Ok((ran, counters))
}

fn measure_nft(bench: &Bench, rounds: usize, figures: &mut Figures) -> anyhow::Result<()> {
    let shape = Shape::UdpDstPort;
    let flow = stream(shape);
    let configs: Vec<(Tool, usize)> = NFT_LINEAR_COUNTS
        .iter()
        .map(|&n| (Tool::NftLinear, n))
        .chain(COUNTS.iter().map(|&n| (Tool::NftMap, n)))
        .collect();
    let mut rows: Vec<Row> = configs
        .iter()
        .map(|&(tool, n)| Row::new(shape.name(), tool, n, None))
        .collect();
    let mut nothing = Row::new("nft block", Tool::Nothing, 0, None);
    for round in 1..=rounds {
        bench.say(format_args!("nftables, round {round}/{rounds}"));
        let base = bench.run(&flow)?;
        nothing.ns.push(base.ns_per_frame);
        nothing.lost = nothing.lost.max(base.lost);
        for (&(tool, n), row) in configs.iter().zip(&mut rows) {
            let (ran, counters) = nft_run(bench, tool, n, &flow)?;
            if let Some((name, packets)) = counters.iter().find(|(_, p)| *p != 0) {
                bail!(
                    "{} with {n} ports: {name} counted {packets} frames of a stream to port \
                     {STREAM_PORT}",
                    tool.label()
                );
            }
            row.ns.push(ran.ns_per_frame);
            row.base.push(base.ns_per_frame);
            row.above.push(ran.ns_per_frame - base.ns_per_frame);
            row.lost = row.lost.max(ran.lost);
        }
    }
    let matching = matching_stream(shape).context("a matching udp stream")?;
    for tool in [Tool::NftLinear, Tool::NftMap] {
        let (ran, counters) = nft_run(bench, tool, SANITY_SESSIONS, &matching)?;
        let member = match tool {
            Tool::NftMap => format!("c{}", 10_000 + SANITY_MEMBER),
            _ => format!("rule {SANITY_MEMBER}"),
        };
        figures.sanity.push(Sanity {
            what: format!("{}: {}", shape.name(), matching.description),
            tool,
            sessions: SANITY_SESSIONS,
            offered: ran.offered,
            lost: ran.lost,
            counted: counters
                .iter()
                .find(|(name, _)| *name == member)
                .map_or(0, |(_, p)| *p),
            others: counters
                .iter()
                .filter(|(name, p)| *name != member && *p != 0)
                .count(),
        });
    }
    figures.rows.push(nothing);
    figures.rows.extend(rows);
    Ok(())
}

/// 1, 64 and 256 sessions of `udp and dst port P` made through the daemon, on each hook.
fn measure_daemon(
    bench: &Bench,
    capstats: &Path,
    rounds: usize,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let shape = Shape::UdpDstPort;
    let flow = stream(shape);
    let scratch = Scratch::create()?;
    let daemon = Daemon::start(capstats, &bench.pair.receiver, &scratch.0, METRICS)?;
    let stream = scaling::Stream {
        pair: bench.pair,
        generator: bench.generator,
        flows: std::slice::from_ref(&flow),
        per_flow: bench.frames,
    };
    bench.say(format_args!(
        "through the daemon, {DAEMON_COUNTS:?} sessions per hook"
    ));
    let measured = scaling::measure_sessions(&daemon, &stream, rounds, &DAEMON_COUNTS, &|i| {
        shape.filter(i)
    })
    .with_context(|| format!("capstats -d logged:\n{}", daemon.log()))?;
    daemon.stop()?;
    drop(scratch);
    bench.say(format_args!("done"));
    let (base, measured) = measured.split_first().context("no baseline row")?;
    let base_ns = median_f64(&base.ns_per_frame);
    figures.rows.push(Row {
        ns: base.ns_per_frame.clone(),
        ..Row::new("daemon block", Tool::Nothing, 0, None)
    });
    for r in measured {
        let hook = r.hook.context("a daemon row without a hook")?;
        figures.rows.push(Row {
            ns: r.ns_per_frame.clone(),
            base: base.ns_per_frame.clone(),
            above: r.ns_per_frame.iter().map(|ns| ns - base_ns).collect(),
            ..Row::new(shape.name(), Tool::Daemon(hook), r.sessions, None)
        });
    }
    Ok(())
}

fn find(figures: &Figures, shape: Shape, tool: Tool, sessions: usize) -> Option<&Row> {
    figures
        .rows
        .iter()
        .find(|r| r.shape == shape.name() && r.tool == tool && r.sessions == sessions)
}

/// The targets, each met or MISSED.
fn targets(figures: &Figures) -> Vec<String> {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut lines = Vec::new();
    for shape in Shape::ALL {
        let target = if shape == Shape::Mixed {
            MIXED_TARGET
        } else {
            ONE_SHAPE_TARGET
        };
        for hook in HOOKS {
            let Some(r) = find(figures, shape, Tool::Direct(hook), 256) else {
                continue;
            };
            let floor = find(figures, shape, Tool::Empty(hook), 0).map_or(String::new(), |e| {
                format!(" (the hook's empty program {:+.0})", e.above())
            });
            lines.push(format!(
                "{:<20} {:<6} 256 sessions above nothing <= {:.0}% of nothing's {:.0} ns: \
                 {:+.0} ns = {:.1}%{floor}: {}",
                shape.name(),
                hook.as_str(),
                target * 100.0,
                r.base(),
                r.above(),
                r.share() * 100.0,
                verdict(r.share() <= target)
            ));
        }
    }
    for shape in Shape::ALL {
        for (hook, before) in ONE_SESSION_BEFORE {
            let Some(r) = find(figures, shape, Tool::Direct(hook), 1) else {
                continue;
            };
            let bound = before + r.noise();
            lines.push(format!(
                "{:<20} {:<6} 1 session above nothing: {:+.0} ns, bound the path before's {before:+.0} \
                 + noise {:.0} = {bound:.0}: {}",
                shape.name(),
                hook.as_str(),
                r.above(),
                r.noise(),
                verdict(r.above() <= bound)
            ));
        }
    }
    for shape in Shape::ALL {
        for hook in HOOKS {
            let (Some(at256), Some(at4096)) = (
                find(figures, shape, Tool::Direct(hook), 256),
                find(figures, shape, Tool::Direct(hook), 4096),
            ) else {
                continue;
            };
            let noise = at4096.noise().max(at256.noise());
            let bound = LOG_GROWTH * at256.above().max(0.0) + noise;
            lines.push(format!(
                "{:<20} {:<6} growth 256 -> 4,096: {:+.0} -> {:+.0} ns, bound {LOG_GROWTH} x \
                 {:.0} + noise {:.0} = {:.0}: {}",
                shape.name(),
                hook.as_str(),
                at256.above(),
                at4096.above(),
                at256.above().max(0.0),
                noise,
                bound,
                verdict(at4096.above() <= bound)
            ));
        }
    }
    lines
}

/// The table for people.
pub fn report(figures: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nlive shared evaluation: N sessions of one shape on the receiving veth, each with its \
         own filter and counter map;\nthe daemon's program for them (same build function) \
         attached by the bench, or (daemon) made with `new`;\n{} frames of 64 bytes per run \
         (tagged ones too), XDP live frames; medians of {} rounds, nothing attached measured in \
         every round before each hook's rows;\nns/frame = CPU ns of the generator thread and \
         ksoftirqd per frame offered; above = ns/frame - that round's nothing attached \
         (median over rounds);\n% = above / nothing attached's ns/frame; every session \
         counted 0 after every run (the stream matches none but `vlan 0`, session 4,096 of \
         `vlan V`, which counted it)\n",
        thousands(figures.frames),
        figures.rounds
    );
    let _ = writeln!(out, "streams (matching no session but `vlan 0`):");
    for (shape, stream) in &figures.streams {
        let _ = writeln!(out, "  {shape:<20} {stream}");
    }
    let _ = writeln!(
        out,
        "  libpcap's live `vlan 1` on {RECV_IF} (socket, tc): {}\n",
        figures.live_vlan
    );
    let _ = writeln!(
        out,
        "{:<20} {:<18} {:>8} {:>6} {:>9} {:>8} {:>8} {:>6}",
        "shape", "hook/tool", "sessions", "groups", "ns/frame", "above", "above %", "lost"
    );
    for r in &figures.rows {
        let nothing = r.tool == Tool::Nothing;
        let tool = match r.mode {
            Some(mode) => format!("{} ({mode})", r.tool.label()),
            None => r.tool.label(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<18} {:>8} {:>6} {:>9.0} {:>8} {:>8} {:>6}",
            r.shape,
            tool,
            if nothing {
                "-".to_owned()
            } else {
                thousands(r.sessions as u64)
            },
            r.groups.map_or("-".to_owned(), |g| g.to_string()),
            median_f64(&r.ns),
            if nothing {
                "-".to_owned()
            } else {
                format!("{:+.0}", r.above())
            },
            if nothing {
                "-".to_owned()
            } else {
                format!("{:.1}%", r.share() * 100.0)
            },
            thousands(r.lost)
        );
    }
    let _ = writeln!(
        out,
        "\nthe daemon (sessions made with `new`) and the bench's attach of the same program:"
    );
    for hook in HOOKS {
        for n in DAEMON_COUNTS {
            let (Some(d), Some(b)) = (
                find(figures, Shape::UdpDstPort, Tool::Daemon(hook), n),
                find(figures, Shape::UdpDstPort, Tool::Direct(hook), n),
            ) else {
                continue;
            };
            let _ = writeln!(
                out,
                "  {:<6} {n:>4} sessions: daemon {:+.0} ns ({:.1}%), bench {:+.0} ns ({:.1}%)",
                hook.as_str(),
                d.above(),
                d.share() * 100.0,
                b.above(),
                b.share() * 100.0
            );
        }
    }
    let _ = writeln!(
        out,
        "\nsanity: a matching stream, {SANITY_SESSIONS} sessions; session {SANITY_MEMBER} must \
         count every frame offered, the others none:"
    );
    for s in &figures.sanity {
        let _ = writeln!(
            out,
            "  {:<18} {}: counted {} of {}, {} others counted, {} lost on the link: {}",
            s.tool.label(),
            s.what,
            thousands(s.counted),
            thousands(s.offered),
            s.others,
            thousands(s.lost),
            if s.exact() { "exact" } else { "WRONG" }
        );
    }
    let _ = writeln!(
        out,
        "\ntargets (issue 11; growth: log 4,096 / log 256 = {LOG_GROWTH}, so at most \
         logarithmic means above(4,096) <= {LOG_GROWTH} x above(256) + noise, noise = the \
         larger spread (max - min) of nothing attached over the rounds of the two rows):"
    );
    for line in targets(figures) {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The table for bench/results.json (its `live_shared` object).
pub fn to_json(figures: &Figures) -> serde_json::Value {
    json!({
        "method": "XDP live frames into a veth pair, one flow matching no session (but `vlan 0`, \
                   session 4,096 of vlan V); N sessions \
                   of one shape, the daemon's program for them (SharedProgram::build / \
                   chain::build_chunk) attached by the bench (socket: AF_PACKET; tc: tcx \
                   ingress; xdp: native or generic), or made through the daemon (tool \
                   '(daemon)'); ns_per_frame: CPU ns of the generator thread and ksoftirqd \
                   per frame offered; above_ns: median over rounds of ns_per_frame minus the \
                   same round's nothing attached",
        "frames_per_run": figures.frames,
        "rounds": figures.rounds,
        "streams": figures.streams.iter().map(|(shape, stream)| json!({
            "shape": shape, "stream": stream,
        })).collect::<Vec<_>>(),
        "live_vlan_program": figures.live_vlan,
        "rows": figures.rows.iter().map(|r| json!({
            "shape": r.shape,
            "tool": r.tool.label(),
            "xdp_mode": r.mode,
            "sessions": r.sessions,
            "groups": r.groups,
            "ns_per_frame": (median_f64(&r.ns) * 10.0).round() / 10.0,
            "above_ns": if r.tool == Tool::Nothing {
                serde_json::Value::Null
            } else {
                json!((r.above() * 10.0).round() / 10.0)
            },
            "above_share": if r.tool == Tool::Nothing {
                serde_json::Value::Null
            } else {
                json!((r.share() * 1e4).round() / 1e4)
            },
            "ns_per_frame_runs": r.ns,
            "nothing_ns_per_frame_runs": r.base,
            "worst_link_lost": r.lost,
        })).collect::<Vec<_>>(),
        "sanity": figures.sanity.iter().map(|s| json!({
            "stream": s.what,
            "tool": s.tool.label(),
            "sessions": s.sessions,
            "member": SANITY_MEMBER,
            "offered": s.offered,
            "counted": s.counted,
            "others_counting": s.others,
            "link_lost": s.lost,
            "exact": s.exact(),
        })).collect::<Vec<_>>(),
        "targets": targets(figures),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streams match none of the sessions' filters but `vlan 0` (savefile
    /// semantics, no kernel needed), the sanity streams exactly session 7 of the first
    /// 256, and the frames have the advertised sizes.
    #[test]
    fn streams_match_no_session_and_sanity_streams_one() {
        for shape in Shape::ALL {
            let flow = stream(shape);
            assert_eq!(flow.frame.len(), 64, "{}", shape.name());
            let expressions: Vec<String> = (0..COUNTS[COUNTS.len() - 1])
                .map(|i| shape.filter(i))
                .collect();
            let filters: Vec<Filter> = expressions
                .iter()
                .map(|e| Filter::for_linktype(pcap::Linktype::ETHERNET, e, 0).expect("compiles"))
                .collect();
            for (expression, filter) in expressions.iter().zip(&filters) {
                assert_eq!(
                    filter.libpcap_matches(&flow.frame),
                    stream_matches(expression),
                    "{}: {expression}",
                    shape.name()
                );
            }
            if let Some(matching) = matching_stream(shape) {
                let matched: Vec<usize> = filters[..SANITY_SESSIONS]
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.libpcap_matches(&matching.frame))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(matched, [SANITY_MEMBER], "{}", shape.name());
            }
        }
    }

    #[test]
    fn nft_rulesets_name_every_port() {
        let linear = nft_ruleset(Tool::NftLinear, 3);
        assert_eq!(linear.matches("counter\n").count(), 3);
        assert!(linear.contains("udp dport 10002 counter"));
        let map = nft_ruleset(Tool::NftMap, 3);
        assert!(map.contains("counter c10002 { }"));
        assert!(map.contains("10002 : \"c10002\""));
        assert!(map.contains("counter name udp dport map @ports"));
    }

    #[test]
    fn signed_medians() {
        assert_eq!(median_f64(&[1.0, -2.0, 3.0]), 1.0);
        assert_eq!(median_f64(&[-1.0, -2.0, 3.0]), -1.0);
        assert_eq!(median_f64(&[4.0, -2.0]), 1.0);
        assert_eq!(median_f64(&[]), 0.0);
    }
}
