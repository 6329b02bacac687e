//! The daemon's compile helper (`capstats __compile-filter`, one JSON job a line on
//! stdin, one answer a line on stdout), driven directly: the live handle it keeps per
//! interface compiles exactly what a handle opened for the job does, an interface made
//! again under the same name (or renamed away, another taking its name) gets a new
//! handle, a vanished one is refused as a fresh helper refuses it, and a kept handle's
//! packet socket receives nothing: hooked for a protocol no frame has, not for every
//! packet (`/proc/net/packet`), and with a filter that takes no packet (`ss --bpf`).
//!
//! The helper runs in the test's namespace (`nsenter --net`); the reference programs
//! are compiled in that namespace by this process, with `capstats-ebpf`'s own
//! `Filter::for_*`, on handles opened for them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::HookName;
use capstats_ebpf::filter::Filter;
use capstats_tests::daemon::binary;
use capstats_tests::frame::MacAddr;
use capstats_tests::link::{Tun, VethPair};
use capstats_tests::netns::NetNs;
use capstats_tests::require_root;
use serde_json::{Value, json};

const TEST: &str = "compile_helper";
/// How long the helper may take to answer one job.
const ANSWER: Duration = Duration::from_secs(10);

const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0xc0, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0xc0, 0x0b]);

/// Expressions whose live programs depend on the handle: ancillary VLAN loads, the
/// packet type, the netmask (`ip broadcast`).
const EXPRESSIONS: [&str; 6] = [
    "vlan 5",
    "inbound",
    "udp port 53",
    "ip broadcast",
    "outbound and tcp",
    "vlan and udp",
];

/// A helper process in `ns`, killed on drop.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Helper {
    fn start(ns: &NetNs) -> anyhow::Result<Self> {
        let binary = binary()?;
        let mut child = ns
            .command_keeping_mounts(binary.to_str().context("binary path")?)
            .arg("__compile-filter")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the helper")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (sender, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            answers,
        })
    }

    /// The helper's process id (nsenter execs it).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The helper's answer to one job.
    fn ask(&mut self, interface: &str, hook: HookName, expression: &str) -> anyhow::Result<Value> {
        let job = json!({"interface": interface, "hook": hook, "expression": expression});
        let mut line = serde_json::to_vec(&job)?;
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        self.stdin.flush()?;
        let answer = self
            .answers
            .recv_timeout(ANSWER)
            .with_context(|| format!("no answer to {job} within {ANSWER:?}"))?;
        Ok(serde_json::from_str(&answer)?)
    }

    /// The program it answers for a job, as raw instructions.
    fn program(
        &mut self,
        interface: &str,
        hook: HookName,
        expression: &str,
    ) -> anyhow::Result<Vec<(u16, u8, u8, u32)>> {
        let answer = self.ask(interface, hook, expression)?;
        let Some(program) = answer.get("Program") else {
            bail!("no program for {expression:?} on {interface} ({hook:?}): {answer}");
        };
        Ok(serde_json::from_value(program.clone())?)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// libpcap's program from a handle opened for it, in `ns`.
fn fresh(
    ns: &NetNs,
    interface: &str,
    hook: HookName,
    expression: &str,
) -> anyhow::Result<Vec<(u16, u8, u8, u32)>> {
    ns.run(|| {
        let filter = match hook {
            HookName::Xdp => Filter::for_xdp(interface, expression),
            HookName::Socket if interface == "any" => Filter::for_any(expression),
            HookName::Socket | HookName::Tc => Filter::for_interface(interface, expression),
        }
        .with_context(|| format!("compiling {expression:?} for {interface}"))?;
        Ok(filter
            .raw()
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect())
    })
}

/// A namespace with a veth pair `cmp-a` / `cmp-b`, B's end with an IPv4 address (a
/// netmask for `ip broadcast`).
fn veth_namespace(tag: &str) -> anyhow::Result<(NetNs, VethPair)> {
    let ns = NetNs::create(tag)?;
    let veth = VethPair::create(&ns, ("cmp-a", MAC_A), &ns, ("cmp-b", MAC_B))?;
    ns.ip(&["addr", "add", "10.77.0.2/24", "dev", "cmp-b"])?;
    Ok((ns, veth))
}

/// One line of `/proc/<pid>/net/packet` (the helper's namespace's packet sockets).
#[derive(Debug)]
struct PacketSocket {
    inode: u64,
    /// The protocol its hook is for (`ETH_P_ALL`, 3: every packet).
    protocol: u16,
    interface_index: i64,
}

/// `ETH_P_ALL`: a hook every packet goes through.
const ETH_P_ALL: u16 = 3;

/// The packet sockets process `pid` holds: its fds' socket inodes found in its
/// namespace's `/proc/net/packet`.
fn packet_sockets_of(pid: u32) -> anyhow::Result<Vec<PacketSocket>> {
    let mut inodes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.push(inode.parse::<u64>()?);
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/packet"))?;
    let mut sockets = Vec::new();
    // sk RefCnt Type Proto Iface R Rmem User Inode
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields.len() >= 9, "/proc/net/packet line {line:?}");
        let inode: u64 = fields[8].parse()?;
        if inodes.contains(&inode) {
            sockets.push(PacketSocket {
                inode,
                protocol: u16::from_str_radix(fields[3], 16)?,
                interface_index: fields[4].parse()?,
            });
        }
    }
    Ok(sockets)
}

/// Whether the helper answers for `expression` what a handle opened for it gives:
/// the same instructions, or a refusal where that handle refuses it too. True when
/// compiled.
fn answers_as_opened(
    helper: &mut Helper,
    ns: &NetNs,
    interface: &str,
    hook: HookName,
    expression: &str,
) -> anyhow::Result<bool> {
    let answer = helper.ask(interface, hook, expression)?;
    let opened = fresh(ns, interface, hook, expression);
    match (answer.get("Program"), opened) {
        (Some(kept), Ok(opened)) => {
            let kept: Vec<(u16, u8, u8, u32)> = serde_json::from_value(kept.clone())?;
            ensure!(
                kept == opened,
                "{expression:?} at {hook:?} on {interface}, on the helper's kept handle: \
                 {kept:?}\non a handle opened for it: {opened:?}"
            );
            Ok(true)
        }
        (None, Err(_)) if answer.get("Refused").is_some() => Ok(false),
        (_, opened) => bail!(
            "{expression:?} at {hook:?} on {interface}: the helper answered {answer}, a \
             handle opened for it gave {opened:?}"
        ),
    }
}

#[test]
fn a_kept_handle_compiles_what_a_handle_opened_for_the_job_does() -> anyhow::Result<()> {
    require_root(TEST);
    let (ns, _veth) = veth_namespace("kept")?;
    let mut helper = Helper::start(&ns)?;
    // Twice round: the first job on each interface opens its handle, every later one
    // compiles on it.
    let mut compiled = 0;
    for _round in 0..2 {
        for expression in EXPRESSIONS {
            for hook in [HookName::Socket, HookName::Tc, HookName::Xdp] {
                compiled += usize::from(answers_as_opened(
                    &mut helper,
                    &ns,
                    "cmp-b",
                    hook,
                    expression,
                )?);
            }
            compiled += usize::from(answers_as_opened(
                &mut helper,
                &ns,
                "any",
                HookName::Socket,
                expression,
            )?);
        }
    }
    // Every one on the veth at socket and tc; most at XDP and on any.
    ensure!(compiled >= 2 * 3 * EXPRESSIONS.len(), "{compiled} compiled");
    // One handle per interface: cmp-b's and any's.
    let sockets = packet_sockets_of(helper.pid())?;
    ensure!(
        sockets.len() == 2,
        "the helper holds {} packet sockets after compiling on two interfaces: {sockets:?}",
        sockets.len()
    );
    Ok(())
}

#[test]
fn an_interface_made_again_or_renamed_gets_a_new_handle_and_a_vanished_one_is_refused()
-> anyhow::Result<()> {
    require_root(TEST);
    let (ns, _veth) = veth_namespace("again")?;
    let mut helper = Helper::start(&ns)?;
    let expression = "udp port 53";
    let ethernet = helper.program("cmp-b", HookName::Socket, expression)?;
    ensure!(ethernet == fresh(&ns, "cmp-b", HookName::Socket, expression)?);

    // Deleted, and a tun device (raw IP, no link-layer header) made under its name.
    ns.ip(&["link", "del", "cmp-b"])?;
    let tun = Tun::create(&ns, "cmp-b")?;
    let raw = helper.program("cmp-b", HookName::Socket, expression)?;
    let opened = fresh(&ns, "cmp-b", HookName::Socket, expression)?;
    ensure!(
        raw == opened && raw != ethernet,
        "on the tun device made under the veth's name the helper compiled {raw:?}; a \
         handle opened there: {opened:?}; on the veth it was {ethernet:?}"
    );

    // Renamed away, a veth taking its name: Ethernet's program again.
    ns.rename_link("cmp-b", "cmp-t")?;
    let _veth = VethPair::create(
        &ns,
        ("cmp-c", MacAddr([0x02, 0, 0, 0, 0xc0, 0x0c])),
        &ns,
        ("cmp-b", MacAddr([0x02, 0, 0, 0, 0xc0, 0x0d])),
    )?;
    let again = helper.program("cmp-b", HookName::Socket, expression)?;
    ensure!(
        again == fresh(&ns, "cmp-b", HookName::Socket, expression)?,
        "after the rename: {again:?}"
    );
    ensure!(
        again != raw,
        "the helper compiled for the renamed tun device: {again:?}"
    );

    // Gone: refused as a helper that never saw it refuses it.
    ns.ip(&["link", "del", "cmp-b"])?;
    let refused = helper.ask("cmp-b", HookName::Socket, expression)?;
    let never_saw = Helper::start(&ns)?.ask("cmp-b", HookName::Socket, expression)?;
    ensure!(
        refused.get("Refused").is_some() && refused == never_saw,
        "for the vanished interface the helper answered {refused}; a new helper {never_saw}"
    );
    drop(tun);
    Ok(())
}

/// The classic filter `ss --bpf` shows on the packet socket with inode `inode` in
/// `ns` (`0x06 0 0 0,` for `ret #0`), if it has one.
fn socket_filter(ns: &NetNs, inode: u64) -> anyhow::Result<Option<String>> {
    let shown = capstats_tests::cmd::run(ns.command("ss").args(["-0", "-b", "-e", "-n"]))?;
    // A line per socket, then its details each on a line starting with a tab.
    let mut this = false;
    for line in shown.lines() {
        if !line.starts_with('\t') {
            this = line.contains(&format!("ino:{inode} "));
        } else if this && let Some(filter) = line.trim().strip_prefix("bpf filter ") {
            return Ok(Some(filter.to_owned()));
        }
    }
    Ok(None)
}

#[test]
fn a_kept_handle_receives_nothing() -> anyhow::Result<()> {
    require_root(TEST);
    let (ns, _veth) = veth_namespace("deaf")?;
    let mut helper = Helper::start(&ns)?;
    let ifindex: i64 = ns.run(|| capstats_tests::link::ifindex("cmp-b"))?.into();
    for (interface, index) in [("cmp-b", ifindex), ("any", 0)] {
        helper.program(interface, HookName::Socket, "udp")?;
        // The handle is made deaf once the answer is out: by the next answer, surely.
        let answer = helper.ask(interface, HookName::Socket, "not an expression (")?;
        ensure!(answer.get("Refused").is_some(), "{answer}");
        let sockets = packet_sockets_of(helper.pid())?;
        ensure!(
            sockets.iter().any(|s| s.interface_index == index),
            "the helper holds no packet socket on {interface} (index {index}) after \
             compiling there: {sockets:?}"
        );
        for socket in &sockets {
            ensure!(
                socket.protocol != ETH_P_ALL
                    && socket.protocol == capstats_ebpf::sys::packet::NO_FRAME_PROTOCOL,
                "the helper's kept packet socket {socket:?} is hooked for protocol \
                 {:#06x}, not for none ({:#06x}): every packet of its interface goes \
                 through it",
                socket.protocol,
                capstats_ebpf::sys::packet::NO_FRAME_PROTOCOL
            );
            let filter = socket_filter(&ns, socket.inode)?;
            ensure!(
                filter.as_deref() == Some("(1):  0x06 0 0 0,"),
                "the helper's kept packet socket {socket:?} has filter {filter:?}, not \
                 `ret #0` alone"
            );
        }
    }
    Ok(())
}
