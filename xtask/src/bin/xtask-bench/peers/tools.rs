//! The tools of the comparison: how each is started on the receiving veth, how the bench
//! knows it is counting, how it is stopped, and where its count comes from.
//!
//! Every tool runs inside the receiving namespace. Processes are started with
//! `ip netns exec` (which execs them: the child's pid is the tool's) and stopped with
//! SIGINT, as a user stops them, which makes tcpdump and Zeek's capstats print their
//! totals; a tool still running when its [`ToolProcess`] is dropped (the bench failed)
//! is killed. The iptables rule goes with the namespace at the latest. Tool processes
//! run at nice -20, as the generator does ([`super::favour_this_thread`]): on a shared
//! machine, what they lose is then theirs, not other work's.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use capstats_common::protocol::{Command, HookName, Reply};

use crate::daemon::client::Connection;
use crate::daemon::netns::{Namespace, Pair, RECV_IF};
use crate::daemon::process::{CpuUsage, Daemon};

/// How long a tool may take to start counting.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a tool may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Zeek's capstats prints a line per interval; the first one says its loop runs.
const ZEEK_INTERVAL_S: &str = "1";
/// The capstats session's name.
const SESSION: &str = "peers";

/// A tool that counts the expression on the receiving veth, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Nothing attached: the baseline.
    Nothing,
    /// capstats' daemon with one session on the hook.
    Capstats(HookName),
    /// `tcpdump -w /dev/null`: libpcap copies every match to user space, written nowhere.
    TcpdumpWrite,
    /// `tcpdump -n > /dev/null`: as above, and each match is decoded and printed.
    TcpdumpPrint,
    /// Zeek's capstats (Debian `capstats`, /usr/bin/capstats): libpcap, and counting in
    /// user space.
    Zeek,
    /// An iptables rule in raw PREROUTING matching the classic program (`-m bpf`).
    Iptables,
}

impl Tool {
    /// Every tool in the order of a round.
    pub const ALL: [Tool; 8] = [
        Tool::Nothing,
        Tool::Capstats(HookName::Socket),
        Tool::Capstats(HookName::Tc),
        Tool::Capstats(HookName::Xdp),
        Tool::TcpdumpWrite,
        Tool::TcpdumpPrint,
        Tool::Zeek,
        Tool::Iptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Tool::Nothing => "nothing attached",
            Tool::Capstats(HookName::Socket) => "capstats hook socket",
            Tool::Capstats(HookName::Tc) => "capstats hook tc",
            Tool::Capstats(HookName::Xdp) => "capstats hook xdp",
            Tool::TcpdumpWrite => "tcpdump -w /dev/null",
            Tool::TcpdumpPrint => "tcpdump > /dev/null",
            Tool::Zeek => "Zeek capstats",
            Tool::Iptables => "iptables -m bpf",
        }
    }

    /// What runs, for people and the JSON.
    pub fn command(self) -> String {
        match self {
            Tool::Nothing => "-".to_owned(),
            Tool::Capstats(hook) => format!(
                "capstats -d; capstats new {SESSION} interface {RECV_IF} hook {} EXPR",
                hook_word(hook)
            ),
            Tool::TcpdumpWrite => format!("tcpdump -i {RECV_IF} -n -Z root -w /dev/null EXPR"),
            Tool::TcpdumpPrint => format!("tcpdump -i {RECV_IF} -n -Z root EXPR > /dev/null"),
            Tool::Zeek => {
                format!("/usr/bin/capstats -i {RECV_IF} -I {ZEEK_INTERVAL_S} -f EXPR")
            }
            Tool::Iptables => format!(
                "iptables -t raw -A PREROUTING -i {RECV_IF} -m bpf --bytecode \"N,CODE JT JF K,...\" (EXPR compiled for DLT_RAW)"
            ),
        }
    }

    /// Whether the tool captures with libpcap (copies to user space).
    pub fn uses_libpcap(self) -> bool {
        matches!(self, Tool::TcpdumpWrite | Tool::TcpdumpPrint | Tool::Zeek)
    }

    /// Whether the tool is one of the peers (not the baseline, not capstats).
    pub fn is_peer(self) -> bool {
        !matches!(self, Tool::Nothing | Tool::Capstats(_))
    }
}

fn hook_word(hook: HookName) -> &'static str {
    match hook {
        HookName::Socket => "socket",
        HookName::Tc => "tc",
        HookName::Xdp => "xdp",
    }
}

/// What every run shares.
pub struct Context<'a> {
    pub pair: &'a Pair,
    pub daemon: &'a Daemon,
    pub expression: &'a str,
    /// The iptables rule's `--bytecode`.
    pub bytecode: &'a str,
}

/// A tool that counts, started.
pub enum Running {
    Nothing,
    Capstats {
        connection: Connection,
        pid: u32,
        before: Option<CpuUsage>,
    },
    Process(ToolProcess),
    Iptables,
}

/// What a stopped tool reported.
pub struct Stopped {
    pub counted: Option<u64>,
    /// ns on a CPU since [`Running::mark`], all its threads.
    pub cpu_ns: Option<u64>,
    pub detail: String,
}

impl Running {
    /// Starts `tool` and returns once it counts.
    pub fn start(tool: Tool, context: &Context) -> anyhow::Result<Self> {
        let recv = &context.pair.receiver;
        match tool {
            Tool::Nothing => Ok(Running::Nothing),
            Tool::Capstats(hook) => {
                let mut connection = Connection::open(context.daemon.socket())?;
                connection.call(Command::New {
                    name: SESSION.to_owned(),
                    interface: Some(RECV_IF.to_owned()),
                    filter: context.expression.to_owned(),
                    hook: Some(hook),
                    direction: None,
                    packets: None,
                })?;
                Ok(Running::Capstats {
                    connection,
                    pid: context.daemon.pid(),
                    before: None,
                })
            }
            Tool::TcpdumpWrite | Tool::TcpdumpPrint => {
                let mut command = recv.command(Path::new("tcpdump"));
                // -Z root: Debian's tcpdump otherwise switches to user tcpdump once
                // its capture is open, and a change of user clears the death signal
                // that stops it should the bench be killed.
                command.args(["-i", RECV_IF, "-n", "-Z", "root"]);
                if tool == Tool::TcpdumpWrite {
                    command.args(["-w", "/dev/null"]);
                }
                command.arg(context.expression);
                // tcpdump prints this after its filter is set: from then on it counts.
                ToolProcess::start(command, "listening on").map(Running::Process)
            }
            Tool::Zeek => {
                let mut command = recv.command(Path::new("/usr/bin/capstats"));
                command.args([
                    "-i",
                    RECV_IF,
                    "-I",
                    ZEEK_INTERVAL_S,
                    "-f",
                    context.expression,
                ]);
                // Its first interval line: the filter is set and its loop runs.
                ToolProcess::start(command, "pkts=").map(Running::Process)
            }
            Tool::Iptables => {
                iptables(
                    recv,
                    &[
                        "-t",
                        "raw",
                        "-A",
                        "PREROUTING",
                        "-i",
                        RECV_IF,
                        "-m",
                        "bpf",
                        "--bytecode",
                        context.bytecode,
                    ],
                )?;
                Ok(Running::Iptables)
            }
        }
    }

    /// Records the tool's CPU time so far: the run starts here.
    pub fn mark(&mut self) -> anyhow::Result<()> {
        match self {
            Running::Capstats { pid, before, .. } => *before = Some(CpuUsage::of(*pid)?),
            Running::Process(process) => {
                let usage = CpuUsage::of(process.pid())?;
                process.before_ns = Some(usage.on_cpu_ns.values().sum());
            }
            Running::Nothing | Running::Iptables => {}
        }
        Ok(())
    }

    /// Stops the tool and reads its count.
    pub fn finish(self, context: &Context) -> anyhow::Result<Stopped> {
        match self {
            Running::Nothing => Ok(Stopped {
                counted: None,
                cpu_ns: None,
                detail: String::new(),
            }),
            Running::Capstats {
                mut connection,
                pid,
                before,
            } => {
                // CPU first: the poll and stop below are the bench's requests, not
                // counting work.
                let after = CpuUsage::of(pid)?;
                let cpu_ns = before.as_ref().map(|b| after.on_cpu_ns_since(b));
                let ticks = before.map(|b| after.ticks.saturating_sub(b.ticks));
                let Reply::Sessions(sessions) = connection.call(Command::Poll {
                    names: vec![SESSION.to_owned()],
                })?
                else {
                    bail!("poll did not answer with sessions");
                };
                let session = sessions
                    .iter()
                    .find(|s| s.name == SESSION)
                    .context("poll did not report the session")?;
                ensure!(session.up, "the session is not up");
                let counted = session.packets.unwrap_or(0);
                connection.call(Command::Stop {
                    name: SESSION.to_owned(),
                })?;
                Ok(Stopped {
                    counted: Some(counted),
                    cpu_ns,
                    detail: format!(
                        "daemon CPU {} ns ({} ticks) over all its threads",
                        cpu_ns.unwrap_or(0),
                        ticks.unwrap_or(0)
                    ),
                })
            }
            Running::Process(process) => process.finish(),
            Running::Iptables => {
                let recv = &context.pair.receiver;
                let listing = iptables(recv, &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]);
                // Removed whatever the listing said, so later runs pay no netfilter hook.
                let removed = remove_raw_table(recv);
                let (packets, bytes) = rule_counters(&listing?)?;
                removed?;
                Ok(Stopped {
                    counted: Some(packets),
                    cpu_ns: None,
                    detail: format!("rule counters: {packets} packets, {bytes} bytes"),
                })
            }
        }
    }
}

/// A tool process in the receiving namespace; killed on drop unless it has exited.
pub struct ToolProcess {
    child: Option<Child>,
    /// Its stderr, line by line, from a reader thread.
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
    before_ns: Option<u64>,
    name: String,
}

impl ToolProcess {
    /// Starts `command` (stdout to /dev/null) and waits until its stderr has a line
    /// containing `ready`.
    fn start(mut command: std::process::Command, ready: &str) -> anyhow::Result<Self> {
        let name = shown(&command);
        // SAFETY: setpriority is async-signal-safe and changes only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::setpriority(libc::PRIO_PROCESS, 0, super::NICE) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The death signal comes when the spawning thread (the bench's main thread)
        // ends, also when the bench is killed before its guards run.
        capstats_testkit::launch::dies_with_spawner(&mut command, libc::SIGKILL);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{name}`"))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child: Some(child),
            lines,
            seen: Vec::new(),
            before_ns: None,
            name,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match process.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(ready);
                    process.seen.push(line);
                    if found {
                        return Ok(process);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "`{}` did not print {ready:?} within {START_TIMEOUT:?}; it printed:\n{}",
                    process.name,
                    process.seen.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "`{}` ended before printing {ready:?}; it printed:\n{}",
                    process.name,
                    process.seen.join("\n")
                ),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGINT, wait for the exit (its CPU time from the kernel's accounting of the
    /// reaped child), and read the count from what it printed.
    fn finish(mut self) -> anyhow::Result<Stopped> {
        let child = self.child.take().context("the tool was stopped already")?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        // SAFETY: plain structs the kernel fills.
        let mut status: libc::c_int = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == pid {
                break;
            }
            if rc < 0 {
                bail!(
                    "wait4 on `{}`: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
            if Instant::now() > deadline {
                // SAFETY: still our unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                bail!(
                    "`{}` did not exit within {STOP_TIMEOUT:?} of SIGINT and was killed",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The reader thread ends at the pipe's end-of-file, after the last line.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let total_ns =
            |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
        let after_ns = total_ns(usage.ru_utime) + total_ns(usage.ru_stime);
        let cpu_ns = self.before_ns.map(|b| after_ns.saturating_sub(b));
        let text = self.seen.join("\n");
        let (counted, detail) = parse_count(&text)
            .with_context(|| format!("`{}` printed no count; it printed:\n{text}", self.name))?;
        Ok(Stopped {
            counted: Some(counted),
            cpu_ns,
            detail,
        })
    }
}

impl Drop for ToolProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `program args...` of `command`, for messages.
fn shown(command: &std::process::Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A count from tcpdump's statistics (`N packets captured`, `... received by filter`,
/// `... dropped by kernel`) or Zeek's capstats total (the `pkts=` line after
/// `=== Total`), and those lines for the report.
fn parse_count(text: &str) -> Option<(u64, String)> {
    let number_before = |suffix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_suffix(suffix)?.trim().parse::<u64>().ok())
    };
    if let Some(captured) = number_before("packets captured") {
        let received = number_before("packets received by filter");
        let dropped = number_before("packets dropped by kernel");
        let show = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        return Some((
            captured,
            format!(
                "{captured} captured, {} received by filter, {} dropped by kernel",
                show(received),
                show(dropped)
            ),
        ));
    }
    let total = text.split("=== Total").nth(1)?;
    let line = total.lines().find(|line| line.contains("pkts="))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.parse::<u64>().ok())
    };
    let packets = field("pkts=")?;
    let stats: Vec<&str> = line
        .split_whitespace()
        .filter(|w| {
            ["pkts=", "nic_pkts=", "nic_drops="]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .collect();
    Some((packets, format!("total: {}", stats.join(" "))))
}

/// The classic program of `expression` for an IP packet without a link-layer header
/// (what netfilter's `-m bpf` sees), in `tcpdump -ddd` form with commas, as
/// `--bytecode` takes it, and the program itself.
pub fn iptables_bytecode(expression: &str) -> anyhow::Result<(String, pcap::BpfProgram)> {
    // DLT_RAW: 12 on Linux (libpcap's pcap/dlt.h).
    let dead = pcap::Capture::dead(pcap::Linktype(12)).context("pcap_open_dead(DLT_RAW)")?;
    let program = dead
        .compile(expression, true)
        .with_context(|| format!("compiling {expression:?} for raw IP"))?;
    let insns = program.get_instructions();
    let mut text = insns.len().to_string();
    for insn in insns {
        text.push(',');
        text.push_str(&insn.to_string());
    }
    Ok((text, program))
}

/// `iptables ARGS...` in `ns`, checked; its standard output.
fn iptables(ns: &Namespace, args: &[&str]) -> anyhow::Result<String> {
    run_in(ns, "iptables", args)
}

/// `ethtool ARGS...` in `ns`, checked.
pub fn ethtool(ns: &Namespace, args: &[&str]) -> anyhow::Result<()> {
    run_in(ns, "ethtool", args).map(drop)
}

fn run_in(ns: &Namespace, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = ns
        .command(Path::new(program))
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` in {} failed ({}): {}",
        args.join(" "),
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the raw table's rules; with iptables' nf_tables backend also the table
/// itself, whose base chain would otherwise stay hooked into every later packet.
fn remove_raw_table(ns: &Namespace) -> anyhow::Result<()> {
    iptables(ns, &["-t", "raw", "-F", "PREROUTING"])?;
    let version = iptables(ns, &["--version"])?;
    if version.contains("nf_tables") {
        run_in(ns, "nft", &["delete", "table", "ip", "raw"])?;
    }
    Ok(())
}

/// Packets and bytes of the first rule of an `iptables -L -v -x -n` chain listing.
fn rule_counters(listing: &str) -> anyhow::Result<(u64, u64)> {
    // Chain PREROUTING (policy ACCEPT 0 packets, 0 bytes)
    //     pkts      bytes target     prot opt in     out     source               destination
    //  1000000  64000000            0    --  veth-recv *       0.0.0.0/0            0.0.0.0/0   match bpf ...
    let rule = listing
        .lines()
        .nth(2)
        .with_context(|| format!("no rule in the listing:\n{listing}"))?;
    let mut numbers = rule.split_whitespace().map(str::parse::<u64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(packets)), Some(Ok(bytes))) => Ok((packets, bytes)),
        _ => bail!("cannot read the rule's counters from {rule:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_tcpdump_and_zeek() {
        let tcpdump = "listening on veth-recv, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                       12 packets captured\n15 packets received by filter\n3 packets dropped by kernel";
        let (n, detail) = parse_count(tcpdump).unwrap();
        assert_eq!(n, 12);
        assert_eq!(
            detail,
            "12 captured, 15 received by filter, 3 dropped by kernel"
        );
        let zeek = "1.0 pkts=5 kpps=0.0 kbytes=0 mbps=0.0 nic_pkts=5 nic_drops=0 u=5 t=0 i=0 o=0 nonip=0\n\
                    2.0 \n=== Total\n\n3.0 pkts=9 kpps=0.0 kbytes=0 mbps=0.0 nic_pkts=10 nic_drops=1 u=9";
        let (n, detail) = parse_count(zeek).unwrap();
        assert_eq!(n, 9);
        assert_eq!(detail, "total: pkts=9 nic_pkts=10 nic_drops=1");
        assert!(parse_count("nothing").is_none());
    }

    #[test]
    fn iptables_rule_counters() {
        let listing = "Chain PREROUTING (policy ACCEPT 0 packets, 0 bytes)\n    \
                       pkts      bytes target     prot opt in     out     source               destination\n \
                       1000000 64000000            0    --  veth-recv *       0.0.0.0/0            0.0.0.0/0            match bpf 0 0 0 0\n";
        assert_eq!(rule_counters(listing).unwrap(), (1_000_000, 64_000_000));
    }

    #[test]
    fn raw_ip_bytecode() {
        let (text, program) = iptables_bytecode("udp port 53").unwrap();
        let count: usize = text.split(',').next().unwrap().parse().unwrap();
        assert_eq!(count, program.get_instructions().len());
        assert_eq!(text.split(',').count(), count + 1);
    }
}
