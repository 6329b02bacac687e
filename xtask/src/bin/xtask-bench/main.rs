//! `xtask-bench`: nanoseconds per packet of generated counting programs, measured in the
//! kernel with `BPF_PROG_RUN`. Started by `cargo xtask bench` (release build, as root).
//!
//! A separate binary because it links capstats-ebpf, and so libpcap: `xtask` itself must
//! start on a machine where libpcap-dev is not installed yet, to install it.
//!
//! Method. Each filter is compiled by libpcap (Ethernet, savefile semantics), translated
//! for the TC hook counting into a one-slot per-CPU map, and loaded as `SCHED_CLS`. An
//! empty `SCHED_CLS` program (`r0 = -1; exit`) runs on the same frame in the same
//! rounds: its time is the harness's own (the call, the skb it sets up, the timer), so
//! the difference is what the filter and its counting cost. A round runs the empty
//! program, then the filter, `repeat` times each; the kernel reports the average
//! nanoseconds per run (whole ns); the figures are medians over the rounds. The frame
//! matches its filter (checked with libpcap before, and with the counter map after), so
//! the accepting path including the map update is what is measured.
//!
//! After that table, the daemon's own figures ([`daemon`]): poll latency, its CPU time
//! while a million frames are counted, its memory, and the latency of a scrape of its
//! Prometheus endpoint with 1 and 256 sessions. They need the `capstats` binary
//! (`--capstats`, which `cargo xtask bench` builds in release mode and passes).
//!
//! The third table ([`hooks`]): what a packet costs at each hook (socket, tc, xdp) with
//! 1, 8, 64 and 256 sessions on its interface, each with its own filter, measured the same
//! way (`--hooks-repeat` runs per call, `--rounds` rounds) before the daemon runs.
//!
//! The fourth ([`peers`]): capstats on each hook against tcpdump, Zeek's capstats and
//! iptables `-m bpf`, counting one expression on the same stream from our XDP
//! live-frames load generator ([`loadgen`]); `--only-peers` runs it alone.
//!
//! The last ([`peers::shared_live`]): shared evaluation on that live stream, 1 to 4,096
//! sessions of one shape per hook against nothing attached and nftables;
//! `--live-shared-only` runs it alone.

mod daemon;
mod frame;
mod hooks;
mod loadgen;
mod peers;
mod shared;
mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::{CounterSlot, Hook, empty_program, translate};
use clap::Parser;
use serde_json::json;
use stats::median;

/// Measure ns/packet of capstats' generated programs with BPF_PROG_RUN, the daemon's
/// poll latency, CPU, memory and /metrics scrape latency, and each hook's cost with 1, 8, 64 and 256 sessions (needs
/// root).
#[derive(Debug, Parser)]
#[command(name = "xtask-bench")]
struct Args {
    /// Runs per BPF_PROG_RUN call; the kernel reports their average.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Rounds per filter; the median is reported. Also the hooks table's rounds.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Runs per BPF_PROG_RUN call for the hooks table (1, 8, 64, 256 sessions per hook);
    /// default: --repeat / 5.
    #[arg(long)]
    hooks_repeat: Option<u32>,
    /// Measure only the hooks table (1, 8, 64, 256 sessions per hook) and print it;
    /// with --out, replace the file's `hooks` object.
    #[arg(long)]
    hooks_only: bool,
    /// Measure only the shared-evaluation scaling table (1 to 4,096 sessions of one
    /// shape per hook) and print it; with --out, replace the file's `shared` object.
    #[arg(long)]
    shared_only: bool,
    /// Where to write the results as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `capstats` binary whose daemon is measured (target/release/capstats).
    #[arg(long)]
    capstats: PathBuf,
    /// Frames counted while the daemon's CPU time is measured.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Timed polls over the daemon's socket, per connection method and session count.
    #[arg(long, default_value_t = 2_000)]
    polls: usize,
    /// Timed runs of `capstats --json poll`, per session count.
    #[arg(long, default_value_t = 100)]
    cli_polls: usize,
    /// Timed scrapes of the daemon's /metrics, per connection method and session count.
    #[arg(long, default_value_t = 500)]
    scrapes: usize,
    /// Peer comparison: frames offered per tool and round (XDP live frames, 8 flows).
    #[arg(long, default_value_t = 4_000_000)]
    peers_frames: u64,
    /// Peer comparison: rounds, each running every tool once; medians are reported.
    #[arg(long, default_value_t = 3)]
    peers_rounds: usize,
    /// Peer comparison: frame size in bytes (Ethernet header included, no FCS).
    #[arg(long, default_value_t = 64)]
    peers_size: usize,
    /// Peer comparison: the expression every tool counts (2 of the 8 flows match).
    #[arg(long, default_value = "udp port 53")]
    peers_filter: String,
    /// Peer comparison: frames per generator-rate run (64, 512, 1500 bytes).
    #[arg(long, default_value_t = 2_000_000)]
    peers_rate_frames: u64,
    /// Only the peer comparison; its figures replace the `peers` object of --out.
    #[arg(long)]
    only_peers: bool,
    /// Measure only the live shared-evaluation table (1 to 4,096 sessions of one shape
    /// per hook on the live stream, the daemon rows and nftables) and print it; with
    /// --out, replace the file's `live_shared` object.
    #[arg(long)]
    live_shared_only: bool,
    /// Measure only the daemon with many clients at once (idle connections and watch
    /// streams beside a polling one: its threads, RSS and poll latency) and print it;
    /// with --out, replace the file's `connections` object.
    #[arg(long)]
    connections_only: bool,
    /// Measure only changes through the daemon (new, modify, stop with --changes-sizes
    /// sessions already on the interface, each hook) and print them; with --out,
    /// replace the file's `changes` object.
    #[arg(long)]
    daemon_changes_only: bool,
    /// Changes through the daemon: sessions already on the interface, per row.
    #[arg(long, value_delimiter = ',', default_values_t = [256, 4096])]
    changes_sizes: Vec<usize>,
    /// Changes through the daemon: timed rounds of new, modify and stop per row.
    #[arg(long, default_value_t = 40)]
    changes: usize,
    /// Many clients: connections opened and left silent.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Many clients: `watch` streams (a `show` each per --watch-period).
    #[arg(long, default_value_t = 1_000)]
    watch_streams: usize,
    /// Many clients: seconds between a watch stream's requests.
    #[arg(long, default_value_t = 1.0)]
    watch_period: f64,
    /// Live shared-evaluation table: frames offered per run.
    #[arg(long, default_value_t = 300_000)]
    live_shared_frames: u64,
    /// Live shared-evaluation table: rounds (medians are reported; the method
    /// wants at least 3). A round costs seconds, compiling a shape's 4,096 filters
    /// minutes: 7 rounds make the medians steadier for little more time.
    #[arg(long, default_value_t = 7)]
    live_shared_rounds: usize,
}

/// One benchmarked filter and a frame it matches.
struct Case {
    /// Short name for the table.
    label: &'static str,
    expression: &'static str,
    /// What the frame is, for people.
    frame_description: &'static str,
    frame: Vec<u8>,
}

/// About 50 classic instructions: an egress policy of "private and shared address
/// space, common services". Its frame takes one of the longest paths through it (the
/// third of four networks, both addresses tested for each; then the last port test).
const LONG_FILTER: &str = "(net 10.0.0.0/8 or net 172.16.0.0/12 or net 192.168.0.0/16 or net 100.64.0.0/10) \
                           and (tcp port 22 or tcp port 80 or tcp port 443 or udp port 53 or udp port 123)";

fn addr(text: &str) -> anyhow::Result<std::net::SocketAddrV4> {
    text.parse().with_context(|| format!("bad address {text}"))
}

/// The `tcp port 80` frame: an HTTP GET from 192.0.2.10:49152 to 198.51.100.80:80
/// (PSH|ACK), 146 bytes. The hooks table's frame too.
fn http_frame() -> anyhow::Result<Vec<u8>> {
    let http_get = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: capstats-bench\r\nAccept: */*\r\n\r\n";
    Ok(frame::tcp_ipv4(
        addr("192.0.2.10:49152")?,
        addr("198.51.100.80:80")?,
        http_get,
    ))
}

/// What [`http_frame`] is, for people.
const HTTP_FRAME: &str = "IPv4/TCP 192.0.2.10:49152 > 198.51.100.80:80, HTTP GET";

fn cases() -> anyhow::Result<Vec<Case>> {
    let http = http_frame()?;
    Ok(vec![
        // The empty expression accepts everything: this row is the counting epilogue
        // alone (map lookup and two additions), what every other row includes.
        Case {
            label: "(count only)",
            expression: "",
            frame_description: "the tcp port 80 frame",
            frame: http.clone(),
        },
        Case {
            label: "tcp port 80",
            expression: "tcp port 80",
            frame_description: HTTP_FRAME,
            frame: http,
        },
        Case {
            label: "vlan and udp",
            expression: "vlan and udp",
            frame_description: "802.1Q VLAN 100, IPv4/UDP 192.0.2.10:53000 > 192.0.2.53:53, DNS query",
            frame: frame::vlan_tagged(
                &frame::udp_ipv4(
                    addr("192.0.2.10:53000")?,
                    addr("192.0.2.53:53")?,
                    &frame::dns_query(),
                ),
                100,
            ),
        },
        Case {
            label: "nets and ports",
            expression: LONG_FILTER,
            frame_description: "IPv4/UDP 203.0.113.7:40123 > 192.168.1.10:123, NTP client request",
            frame: frame::udp_ipv4(
                addr("203.0.113.7:40123")?,
                addr("192.168.1.10:123")?,
                &frame::ntp_request(),
            ),
        },
    ])
}

/// The figures of one filter.
struct Measured {
    classic_insns: usize,
    ebpf_insns: usize,
    ebpf_slots: usize,
    /// Median ns per run: the filter program, the empty program, and their difference.
    program_ns: u64,
    empty_ns: u64,
    diff_ns: i64,
    program_rounds: Vec<u64>,
    empty_rounds: Vec<u64>,
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask-bench: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the hooks table is measured with.
fn hooks_options(args: &Args) -> anyhow::Result<hooks::Options> {
    Ok(hooks::Options {
        repeat: args.hooks_repeat.unwrap_or((args.repeat / 5).max(1)),
        rounds: args.rounds,
        frame: http_frame()?,
        frame_description: format!("{HTTP_FRAME} (PSH|ACK)"),
    })
}

/// What the shared-evaluation table is measured with.
fn shared_options(args: &Args) -> shared::Options {
    shared::Options {
        repeat: args.hooks_repeat.unwrap_or((args.repeat / 5).max(1)),
        rounds: args.rounds,
    }
}

/// Replaces the object `key` of the JSON results file `out`, keeping the rest.
fn replace_in_results(
    out: &std::path::Path,
    key: &str,
    value: serde_json::Value,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let mut results: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", out.display()))?;
    results[key] = value;
    let text = serde_json::to_string_pretty(&results)?;
    std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    println!("\n{key} written to {}", out.display());
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.repeat > 0
            && args.hooks_repeat != Some(0)
            && args.rounds > 0
            && args.frames > 0
            && args.polls > 0
            && args.cli_polls > 0
            && args.scrapes > 0,
        "--repeat, --hooks-repeat, --rounds, --frames, --polls, --cli-polls and --scrapes must be \
         at least 1"
    );
    let machine = Machine::this()?;
    if args.connections_only {
        ensure!(
            args.watch_period > 0.0 && args.watch_period.is_finite(),
            "--watch-period must be a positive number of seconds"
        );
        let figures = daemon::connections::measure(&daemon::connections::Options {
            capstats: args.capstats.clone(),
            idle: args.idle_connections,
            watch: args.watch_streams,
            period: std::time::Duration::from_secs_f64(args.watch_period),
            polls: args.polls,
        })
        .context("the connections bench")?;
        print!("{}", daemon::connections::report(&figures));
        if let Some(out) = &args.out {
            replace_in_results(out, "connections", daemon::connections::to_json(&figures))?;
        }
        return Ok(());
    }
    if args.daemon_changes_only {
        let rows = daemon::changes::measure(&daemon::changes::Options {
            capstats: args.capstats.clone(),
            sizes: args.changes_sizes.clone(),
            changes: args.changes,
        })
        .context("the changes bench")?;
        print!("{}", daemon::changes::report(&rows, args.changes));
        if let Some(out) = &args.out {
            replace_in_results(out, "changes", daemon::changes::to_json(&rows))?;
        }
        return Ok(());
    }
    if args.hooks_only {
        let hooks = hooks::measure(&hooks_options(args)?).context("the hooks table")?;
        print!("{}", hooks::report(&hooks));
        if let Some(out) = &args.out {
            replace_in_results(out, "hooks", hooks::to_json(&hooks))?;
        }
        return Ok(());
    }
    if args.shared_only {
        let shared = shared::measure(&shared_options(args)).context("the shared table")?;
        print!("{}", shared::report(&shared));
        if let Some(out) = &args.out {
            replace_in_results(out, "shared", shared::to_json(&shared))?;
        }
        return Ok(());
    }
    let live_shared_options = peers::shared_live::Options {
        capstats: args.capstats.clone(),
        frames: args.live_shared_frames,
        rounds: args.live_shared_rounds,
    };
    if args.live_shared_only {
        let live = peers::shared_live::measure(&live_shared_options)
            .context("the live shared-evaluation table")?;
        print!("{}", peers::shared_live::report(&live));
        ensure!(
            peers::shared_live::exact(&live),
            "a matching stream was not counted exactly (above); results not written"
        );
        if let Some(out) = &args.out {
            replace_in_results(out, "live_shared", peers::shared_live::to_json(&live))?;
        }
        return Ok(());
    }
    let peer_options = peers::Options {
        capstats: args.capstats.clone(),
        expression: args.peers_filter.clone(),
        frames: args.peers_frames,
        size: args.peers_size,
        rounds: args.peers_rounds,
        rate_frames: args.peers_rate_frames,
    };
    if args.only_peers {
        return peers::run_alone(&machine, &peer_options, args.out.as_deref());
    }
    let empty_program = LoadedProgram::load(
        Hook::TcIngress,
        "xtask_empty",
        &empty_program(Hook::TcIngress),
    )
    .context("loading the empty SCHED_CLS program")?;
    let empty = empty_program.sched_classifier()?;

    let cases = cases()?;
    let mut results = Vec::new();
    for case in &cases {
        eprintln!(
            "measuring {:?}: {} rounds of {} runs",
            case.label, args.rounds, args.repeat
        );
        let measured = measure(case, &empty, args)
            .with_context(|| format!("benchmark of {:?}", case.expression))?;
        results.push(measured);
    }

    print!("{}", report(&machine, args, &cases, &results));

    // Before the daemon: its network namespaces are torn down in the background after
    // it, on these CPUs. Printed after it, as the third table.
    let hooks = hooks::measure(&hooks_options(args)?).context("the hooks table")?;

    eprintln!("measuring the daemon");
    let daemon = daemon::measure(&daemon::Options {
        capstats: args.capstats.clone(),
        frames: args.frames,
        polls: args.polls,
        cli_polls: args.cli_polls,
        scrapes: args.scrapes,
    })?;
    print!("\n{}", daemon::report(&machine, &daemon));
    print!("\n{}", hooks::report(&hooks));
    let shared = shared::measure(&shared_options(args)).context("the shared table")?;
    print!("\n{}", shared::report(&shared));
    eprintln!("comparing with the peers");
    let peers = peers::measure(&peer_options).context("the peer comparison")?;
    print!("\n{}", peers::report(&machine, &peers));
    eprintln!("measuring shared evaluation live");
    let live_shared = peers::shared_live::measure(&live_shared_options)
        .context("the live shared-evaluation table")?;
    print!("\n{}", peers::shared_live::report(&live_shared));
    ensure!(
        peers::shared_live::exact(&live_shared),
        "a matching stream was not counted exactly by the live shared table (above); results \
         not written"
    );
    ensure!(
        daemon::counted_exactly(&daemon),
        "the daemon's sessions did not count exactly the frames sent (above); results not written"
    );

    if let Some(out) = &args.out {
        let mut json = to_json(&machine, args, &cases, &results);
        json["daemon"] = daemon::to_json(&daemon);
        json["hooks"] = hooks::to_json(&hooks);
        json["shared"] = shared::to_json(&shared);
        json["peers"] = peers::to_json(&peers);
        json["live_shared"] = peers::shared_live::to_json(&live_shared);
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
        println!("\nwritten to {}", out.display());
    }
    Ok(())
}

fn measure(case: &Case, empty: &SchedClassifier, args: &Args) -> anyhow::Result<Measured> {
    let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, case.expression, 0)?;
    ensure!(
        filter.libpcap_matches(&case.frame),
        "libpcap says the frame does not match; the benchmark would time the rejecting path"
    );
    let counters = CounterMap::create("xtask_bench", 1)?;
    let insns = translate(
        filter.program(),
        Hook::TcIngress,
        CounterSlot { map: 0, slot: 0 },
    )?;
    let maps = MapBinding::counters([&counters]);
    let loaded = LoadedProgram::load_with(Hook::TcIngress, "xtask_bench", &insns, &maps)?;
    let program = loaded.sched_classifier()?;

    // Warm caches and branch predictors; not counted.
    let warm_up = (args.repeat / 10).max(1);
    run_timed(empty, &case.frame, warm_up)?;
    run_timed(&program, &case.frame, warm_up)?;

    let (mut empty_rounds, mut program_rounds) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        empty_rounds.push(run_timed(empty, &case.frame, args.repeat)?);
        program_rounds.push(run_timed(&program, &case.frame, args.repeat)?);
    }

    let runs = u64::from(warm_up) + args.rounds as u64 * u64::from(args.repeat);
    let counted = counters.read(0)?;
    ensure!(
        counted.packets == runs && counted.bytes == runs * case.frame.len() as u64,
        "the program counted packets={} bytes={} in {runs} runs of a {}-byte frame; it should count every run",
        counted.packets,
        counted.bytes,
        case.frame.len()
    );

    let program_ns = median(&program_rounds);
    let empty_ns = median(&empty_rounds);
    Ok(Measured {
        classic_insns: filter.program().len(),
        ebpf_insns: insns.len(),
        ebpf_slots: loaded.slots(),
        program_ns,
        empty_ns,
        diff_ns: program_ns as i64 - empty_ns as i64,
        program_rounds,
        empty_rounds,
    })
}

/// One BPF_PROG_RUN of `repeat` runs; the kernel's average ns per run.
fn run_timed(program: &SchedClassifier, frame: &[u8], repeat: u32) -> anyhow::Result<u64> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_RUN")?;
    Ok(result.duration.as_nanos() as u64)
}

/// What the figures were measured on.
struct Machine {
    cpu: String,
    cpus: usize,
    kernel: String,
}

/// `AMD EPYC (…) (2 CPUs), Linux …`: the `machine:` line of every table.
impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} CPUs), {}", self.cpu, self.cpus, self.kernel)
    }
}

impl Machine {
    fn this() -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        // The first CPU's fields; a virtual machine's model name can be as vague as
        // "AMD EPYC", so family, model and stepping say which generation it is.
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        let mut cpu = field("model name").unwrap_or_else(|| "unknown CPU".to_owned());
        if let (Some(family), Some(model), Some(stepping)) =
            (field("cpu family"), field("model"), field("stepping"))
        {
            let _ = write!(
                cpu,
                " (family {family}, model {model}, stepping {stepping})"
            );
        }
        let cpus = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        Ok(Self {
            cpu,
            cpus,
            kernel: uname()?,
        })
    }
}

/// `uname -srvm`.
fn uname() -> anyhow::Result<String> {
    // SAFETY: utsname is plain bytes; uname fills it or fails.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        bail!("uname: {}", std::io::Error::last_os_error());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok([
        field(&name.sysname),
        field(&name.release),
        field(&name.version),
        field(&name.machine),
    ]
    .join(" "))
}

fn report(machine: &Machine, args: &Args, cases: &[Case], results: &[Measured]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(
        out,
        "method:  BPF_PROG_RUN on SCHED_CLS, {} runs per call, median of {} rounds",
        args.repeat, args.rounds
    );
    let _ = writeln!(
        out,
        "columns: cBPF, eBPF = instructions; frame = bytes; program, empty, diff = ns per packet \
         (diff = program - empty)\n"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>5} {:>6} {:>8} {:>8} {:>8}",
        "filter", "cBPF", "eBPF", "frame", "program", "empty", "diff"
    );
    for (case, m) in cases.iter().zip(results) {
        let _ = writeln!(
            out,
            "{:<16} {:>5} {:>5} {:>6} {:>8} {:>8} {:>8}",
            case.label,
            m.classic_insns,
            m.ebpf_insns,
            case.frame.len(),
            m.program_ns,
            m.empty_ns,
            m.diff_ns
        );
    }
    let _ = writeln!(out, "\nframes (each matches its filter):");
    for case in cases {
        let _ = writeln!(out, "  {:<16} {}", case.label, case.frame_description);
    }
    let _ = writeln!(out);
    for case in cases.iter().filter(|case| case.label != case.expression) {
        let _ = writeln!(out, "{} = {:?}", case.label, case.expression);
    }
    out
}

fn to_json(
    machine: &Machine,
    args: &Args,
    cases: &[Case],
    results: &[Measured],
) -> serde_json::Value {
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "machine": { "cpu": machine.cpu, "cpus": machine.cpus, "kernel": machine.kernel },
        "method": {
            "harness": "BPF_PROG_RUN, BPF_PROG_TYPE_SCHED_CLS",
            "repeat": args.repeat,
            "rounds": args.rounds,
            "statistic": "median over rounds of the kernel's average ns per run",
        },
        "unix_time": unix_time,
        "results": cases.iter().zip(results).map(|(case, m)| json!({
            "label": case.label,
            "expression": case.expression,
            "frame": case.frame_description,
            "frame_bytes": case.frame.len(),
            "classic_insns": m.classic_insns,
            "ebpf_insns": m.ebpf_insns,
            "ebpf_slots": m.ebpf_slots,
            "program_ns": m.program_ns,
            "empty_ns": m.empty_ns,
            "diff_ns": m.diff_ns,
            "program_ns_rounds": m.program_rounds,
            "empty_ns_rounds": m.empty_rounds,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every benchmark frame matches its filter by libpcap's own verdict (no kernel, no
    /// root needed), and the long filter stays near 50 classic instructions.
    #[test]
    fn frames_match_their_filters() {
        for case in cases().expect("cases") {
            let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, case.expression, 0)
                .expect("compiles");
            assert!(filter.libpcap_matches(&case.frame), "{}", case.label);
        }
        let long =
            Filter::for_linktype(pcap::Linktype::ETHERNET, LONG_FILTER, 0).expect("compiles");
        assert!(
            (45..=55).contains(&long.program().len()),
            "{}",
            long.program().len()
        );
    }
}
