//! What a packet is under GRO and GSO: `packets wire|stack`, end to end.
//!
//! A real TCP bulk transfer from A to B over the rig's veth pair with GRO on at B's end
//! (the default on real NICs; the other tests turn it off) and a 1500-byte MTU. B's
//! end merges the wire frames into large packets before tc ingress, the packet socket
//! and tcpdump see them; XDP runs before GRO and sees every frame. So on the data
//! direction (`tcp and src host A`):
//! - a tc session in `packets wire` counts what the xdp session counts, packets and
//!   bytes, exactly, and what the sender's TCP stack says it sent (`tcpi_segs_out`);
//! - tc `packets stack` and socket sessions count what tcpdump records, packets and
//!   bytes, exactly; a socket session in `packets wire` counts what xdp counts;
//! - stack counts fewer packets than wire (GRO merged: if it did not, the test says so
//!   rather than passing for want of a difference).
//!
//! An xdp session on B's end turns off TSO on A's end (README), so the first transfer
//! has GRO only. A second one, with no xdp session, has TSO on at the sender too: tc
//! `packets wire` then counts the sender's segments, which left A as GSO packets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::Packets;
use capstats_tests::daemon::Client;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{IP_A, IP_B, Setup};
use capstats_tests::require_root;
use capstats_tests::tcpdump::Tcpdump;

const TEST: &str = "daemon_gro";
/// Bytes of the bulk transfer.
const BULK: usize = 20 << 20;
/// The data direction.
const DATA: &str = "tcp and src host 10.9.0.1";
const ARRIVAL: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(300);

/// `new NAME interface IF hook HOOK [direction in] [packets P] filter EXPR`.
fn new(
    client: &Client,
    name: &str,
    interface: &str,
    hook: &str,
    packets: Option<&str>,
) -> anyhow::Result<()> {
    let mut args = vec!["new", name, "interface", interface, "hook", hook];
    if hook == "tc" {
        args.extend(["direction", "in"]);
    }
    if let Some(packets) = packets {
        args.extend(["packets", packets]);
    }
    args.extend(["filter", DATA]);
    client.ok(&args).map(drop)
}

/// MTU 1500 on both ends, GRO on at B's end, addresses on both.
fn gro_on(setup: &Setup) -> anyhow::Result<()> {
    let rig = &setup.rig;
    for (ns, end, ip) in [
        (&rig.ns_a, &rig.veth.a.name, IP_A),
        (&rig.ns_b, &rig.veth.b.name, IP_B),
    ] {
        ns.ip(&["link", "set", end, "mtu", "1500"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", end])?;
    }
    capstats_tests::cmd::run(rig.ns_b.command("ethtool").args([
        "-K",
        &rig.veth.b.name,
        "gro",
        "on",
    ]))?;
    Ok(())
}

/// What the sender's TCP says it sent (`TCP_INFO`), read after the connection is
/// closed both ways.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Segments, each GSO segment one, retransmissions included (`tcpi_segs_out`).
    segments: u64,
    /// Payload bytes, retransmissions included (`tcpi_bytes_sent`).
    payload: u64,
    /// Segments sent again (`tcpi_total_retrans`): on a loaded machine the veth may
    /// drop a frame before any hook (its ring full); TCP then sends it again.
    retransmitted: u64,
}

impl Sent {
    /// The frames' bytes on the wire: every segment with its own Ethernet (14), IPv4
    /// (20) and TCP headers: 32 bytes with Linux's default timestamps option, 40 for
    /// the SYN (MSS, SACK permitted, timestamps, window scale).
    fn wire_bytes(self) -> u64 {
        self.payload + (14 + 20 + 40) + (self.segments - 1) * (14 + 20 + 32)
    }

    /// The least a hook can have counted: every segment but those the link dropped,
    /// each of which was sent again.
    fn least_counted(self) -> u64 {
        self.segments - self.retransmitted
    }

    /// Whether `counted` (packets, bytes) of a `wire` session is what the sender put
    /// on the wire: exactly, when nothing was sent again; else short by at most the
    /// segments sent again (dropped before any hook), never more than sent.
    fn check(self, what: &str, counted: (u64, u64)) -> anyhow::Result<()> {
        let sent = (self.segments, self.wire_bytes());
        if self.retransmitted == 0 {
            ensure!(
                counted == sent,
                "{what} counted {counted:?}, the sender sent {self:?}: {sent:?} on the wire"
            );
        } else {
            ensure!(
                counted.0 >= self.least_counted() && counted.0 <= sent.0 && counted.1 <= sent.1,
                "{what} counted {counted:?}, the sender sent {self:?}: {sent:?} on the wire, \
                 {} segments sent again",
                self.retransmitted
            );
            eprintln!(
                "{what}: {} segments sent again (dropped before the hooks on a loaded \
                 machine): counted {counted:?} of {sent:?}",
                self.retransmitted
            );
        }
        Ok(())
    }
}

/// `BULK` bytes from A to B over TCP (port `port`); what the sender says it sent.
fn bulk_transfer(setup: &Setup, port: u16) -> anyhow::Result<Sent> {
    let rig = &setup.rig;
    let listener = rig
        .ns_b
        .run(|| TcpListener::bind(SocketAddr::from((IP_B, port))).context("bind in B"))?;
    let server = std::thread::spawn(move || -> anyhow::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut received = 0;
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buffer)? {
                0 => break,
                n => received += n,
            }
        }
        Ok(received)
    });
    let mut stream = rig.ns_a.run(|| {
        TcpStream::connect_timeout(&SocketAddr::from((IP_B, port)), Duration::from_secs(5))
            .context("connect from A")
    })?;
    stream.set_read_timeout(Some(ARRIVAL))?;
    let data = vec![0x5au8; BULK];
    stream.write_all(&data)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let received = server.join().expect("server thread")?;
    ensure!(received == BULK, "B received {received} of {BULK} bytes");
    // B closed after the end of data: A reads its FIN, then acknowledges it.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: tcp_info is plain data; the length says how much the kernel wrote.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    ensure!(rc == 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    Ok(Sent {
        segments: u64::from(info.tcpi_segs_out),
        payload: info.tcpi_bytes_sent,
        retransmitted: u64::from(info.tcpi_total_retrans),
    })
}

#[test]
fn tc_wire_counts_the_frames_on_the_wire_and_stack_what_tcpdump_sees() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("gro")?;
    gro_on(&setup)?;
    let client = &setup.client;
    let interface = setup.rig.interface().to_owned();
    new(client, "xdp", &interface, "xdp", None)?;
    new(client, "wire", &interface, "tc", Some("wire"))?;
    new(client, "stack", &interface, "tc", Some("stack"))?;
    new(client, "tcstack", &interface, "tc", None)?;
    new(client, "sock", &interface, "socket", None)?;
    new(client, "sockwire", &interface, "socket", Some("wire"))?;
    for (name, want) in [
        ("xdp", Packets::Wire),
        ("wire", Packets::Wire),
        ("stack", Packets::Stack),
        ("tcstack", Packets::Stack),
        ("sock", Packets::Stack),
        ("sockwire", Packets::Wire),
    ] {
        let got = client.show(name)?.packets_counted;
        ensure!(got == Some(want), "{name}: packets {got:?}, want {want:?}");
    }
    // Said in `show` for people too.
    let shown = client.ok(&["show", "wire"])?;
    ensure!(
        shown.contains("counts:") && shown.contains("wire (each GSO/GRO segment"),
        "show wire:\n{shown}"
    );
    let dump = Tcpdump::start(
        &setup.rig.ns_b,
        &interface,
        DATA,
        &setup.scratch.join("gro.pcap"),
    )?;
    let sent = bulk_transfer(&setup, 5201)?;
    let xdp = client.settle("xdp", sent.least_counted(), ARRIVAL, QUIET)?;
    let recorded = dump.stop()?;
    ensure!(
        recorded.dropped_by_kernel == 0,
        "tcpdump dropped {} packets: its count is no oracle",
        recorded.dropped_by_kernel
    );
    let sessions = client.poll()?;
    let get = |name: &str| {
        sessions
            .iter()
            .find(|s| s.name == name)
            .map(counts)
            .with_context(|| format!("no session {name}"))
    };
    let (xdp, wire, stack, tcstack, sock, sockwire) = (
        counts(&xdp),
        get("wire")?,
        get("stack")?,
        get("tcstack")?,
        get("sock")?,
        get("sockwire")?,
    );
    let tcpdump = (
        recorded.lengths.len() as u64,
        recorded.lengths.iter().map(|&l| u64::from(l)).sum::<u64>(),
    );
    eprintln!(
        "GRO at the receiver, {BULK} bytes: sender {sent:?}; (packets, bytes): \
         xdp {xdp:?}, tc wire {wire:?}, tc stack {stack:?}, tc default {tcstack:?}, \
         socket {sock:?}, socket wire {sockwire:?}, tcpdump {tcpdump:?}"
    );
    // XDP sees the frames before GRO: fewer packets at tc means GRO merged.
    if stack.0 >= xdp.0 {
        bail!(
            "GRO did not merge at {interface}: tc stack counted {} packets, xdp {} frames; \
             this test needs merged packets to tell stack from wire",
            stack.0,
            xdp.0
        );
    }
    ensure!(wire == xdp, "tc wire {wire:?} != xdp {xdp:?}");
    sent.check("tc wire", wire)?;
    ensure!(
        stack == tcpdump,
        "tc stack {stack:?} != tcpdump {tcpdump:?}"
    );
    ensure!(
        tcstack == stack,
        "tc default {tcstack:?} != tc stack {stack:?}"
    );
    ensure!(sock == tcpdump, "socket {sock:?} != tcpdump {tcpdump:?}");
    ensure!(sockwire == xdp, "socket wire {sockwire:?} != xdp {xdp:?}");
    ensure!(
        stack.1 < wire.1,
        "stack bytes {} !< wire bytes {}",
        stack.1,
        wire.1
    );

    // modify keeps the option.
    client.ok(&[
        "modify",
        "wire",
        "tcp and src host 10.9.0.1 and dst port 5202",
    ])?;
    ensure!(client.show("wire")?.packets_counted == Some(Packets::Wire));

    // XDP counts wire frames only: asking for stack there is refused, saying why.
    let refused = client.fails(&[
        "new",
        "xs",
        "interface",
        &interface,
        "hook",
        "xdp",
        "packets",
        "stack",
        "tcp",
    ])?;
    ensure!(
        refused.stderr.contains("`packets wire` only"),
        "xdp packets stack: {refused}"
    );

    // Without the xdp session, A's end has TSO back: the sender hands the veth GSO
    // packets, which reach B's tc ingress unsplit (and GRO merges more). tc wire
    // counts the sender's segments still.
    client.ok(&["stop", "xdp"])?;
    new(client, "wire2", &interface, "tc", Some("wire"))?;
    new(client, "stack2", &interface, "tc", Some("stack"))?;
    let sent = bulk_transfer(&setup, 5202)?;
    let wire2 = counts(&client.settle("wire2", sent.least_counted(), ARRIVAL, QUIET)?);
    let stack2 = counts(&client.show("stack2")?);
    eprintln!(
        "TSO at the sender and GRO at the receiver: sender {sent:?}; tc wire {wire2:?}, \
         tc stack {stack2:?}"
    );
    sent.check("with TSO, tc wire", wire2)?;
    ensure!(
        stack2.0 < wire2.0,
        "no merged packets with TSO on: stack {stack2:?}, wire {wire2:?}"
    );
    Ok(())
}

/// A restarted daemon (`kill -9`: it regenerates the programs from its table) keeps
/// each session's `packets`: the tc `wire` session still counts the sender's segments,
/// the `stack` one the merged packets.
#[test]
fn packets_wire_survives_a_restart() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("gro-restart")?;
    gro_on(&setup)?;
    let interface = setup.rig.interface().to_owned();
    new(&setup.client, "wire", &interface, "tc", Some("wire"))?;
    new(&setup.client, "stack", &interface, "tc", None)?;
    let setup = setup.restart("daemon2.log", |_| Ok(()))?;
    let client = &setup.client;
    ensure!(client.show("wire")?.packets_counted == Some(Packets::Wire));
    ensure!(client.show("stack")?.packets_counted == Some(Packets::Stack));
    let sent = bulk_transfer(&setup, 5203)?;
    let wire = counts(&client.settle("wire", sent.least_counted(), ARRIVAL, QUIET)?);
    let stack = counts(&client.show("stack")?);
    eprintln!("after a restart: sender {sent:?}; tc wire {wire:?}, tc stack {stack:?}");
    sent.check("after a restart, tc wire", wire)?;
    ensure!(
        stack.0 < wire.0,
        "after a restart, tc stack {stack:?} is not below tc wire {wire:?}: GRO did not \
         merge, or the stack session counts wire"
    );
    Ok(())
}
