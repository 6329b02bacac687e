//! The load generator: frames into a veth pair at over a million per second, an exact
//! number of them, from a mix of flows.
//!
//! An AF_PACKET socket writing frames one system call per batch reaches about 0.45 M
//! frames/s here (the daemon bench's sender), `trafgen` about 0.2 M. The kernel's XDP
//! test harness goes further: `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs an
//! XDP program `repeat` times on copies of one frame and really carries out its verdict,
//! so a program returning `XDP_TX` with `ingress_ifindex` = the sending veth transmits
//! each copy out of that veth, into its peer (as xdp-trafficgen does). No skb is built
//! on the sending side and no system call is made per frame.
//!
//! Exactness. A `BPF_PROG_RUN` call either runs its `repeat` iterations or fails (a
//! signal ends it with `EINTR`), so the frames offered are the sum of the calls'
//! `repeat`s. The program also counts its own runs (packets and bytes) in a per-CPU
//! map, which is read back and must agree. What the veth then fails to pass on (its
//! peer's ring full, or the peer without NAPI: see [`Pair`](crate::daemon::netns::Pair))
//! the kernel counts as the sender's drops and the receiver does not receive: the caller
//! compares the receiving interface's counters with [`Offered::frames`].
//!
//! Flows. A live-frames run sends copies of one frame, so the mix is made of calls:
//! every flow has its own frame, and the calls go round the flows in chunks of at most
//! [`CHUNK`] frames until each flow has sent its share, so that the flows interleave
//! every few milliseconds and each flow's count is exact.
//!
//! The harness needs the calling thread in the sender's network namespace (it looks
//! `ingress_ifindex` up there): [`Generator::offer`] runs inside
//! [`Namespace::run`](crate::daemon::netns::Namespace::run).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use capstats_ebpf::asm::Assembler;
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::insn::build::{alu64, branch64, load, mov64, store};
use capstats_ebpf::insn::{AluOp, Helper, Insn, JmpOp, Label, MapRef, Operand, Reg, Size};
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::Hook;

use crate::frame;

/// Frames per `BPF_PROG_RUN` call at most. Large, because every live-frames call
/// also waits in the kernel, off the CPU, for about 35 ms here (its thread sleeps in
/// `synchronize_rcu`, seen in its `wchan`: an RCU grace period in the teardown of the
/// call's page pool): with 16,384 frames per call the generator sent 0.4 M frames/s
/// while its thread's CPU time allowed 1.5 M; with 262,144, 1.3 M. So the flows follow each
/// other in blocks of up to this many frames rather than finely interleaved, which
/// changes no count. [`Offered::waited_per_call`] reports that wait.
pub const CHUNK: u32 = 1 << 20;
/// Frames the harness hands to the driver at a time (`batch_size`; the kernel's
/// maximum is 256, its default 64).
const BATCH: u32 = 64;
/// `XDP_TX`: send the frame back out of the interface it arrived on, which is the
/// sending veth's `ingress_ifindex`, so out towards its peer.
const XDP_TX: i32 = 3;

/// One flow: a frame and what it is.
#[derive(Debug, Clone)]
pub struct Flow {
    pub description: String,
    pub frame: Vec<u8>,
}

/// The mix every run sends: eight flows, four UDP and four TCP, each between its own
/// pair of hosts, to well-known ports (DNS twice, NTP, syslog; HTTP, HTTPS twice, SSH).
/// Every frame is `size` bytes (Ethernet header included, no FCS, as the kernel and
/// tcpdump count it), padded with payload.
pub fn flows(size: usize) -> anyhow::Result<Vec<Flow>> {
    // Ethernet 14 + IPv4 20 + UDP 8 / TCP 20.
    const UDP_HEADERS: usize = 42;
    const TCP_HEADERS: usize = 54;
    ensure!(
        (60..=1514).contains(&size),
        "frame size {size} is not between 60 and 1514 bytes (Ethernet without FCS, MTU 1500)"
    );
    let spec: [(&str, &str, &str); 8] = [
        ("udp", "10.1.0.1:40001", "10.2.0.1:53"),
        ("udp", "10.1.0.2:40002", "10.2.0.2:53"),
        ("udp", "10.1.0.3:40003", "10.2.0.3:123"),
        ("udp", "10.1.0.4:40004", "10.2.0.4:514"),
        ("tcp", "10.1.0.5:50005", "10.2.0.5:80"),
        ("tcp", "10.1.0.6:50006", "10.2.0.6:443"),
        ("tcp", "10.1.0.7:50007", "10.2.0.7:22"),
        ("tcp", "10.1.0.8:50008", "10.2.0.8:443"),
    ];
    let addr = |text: &str| -> anyhow::Result<SocketAddrV4> {
        text.parse().with_context(|| format!("bad address {text}"))
    };
    spec.iter()
        .map(|&(protocol, src, dst)| {
            let (src, dst) = (addr(src)?, addr(dst)?);
            // The payload byte is the flow's last address byte: a frame is recognisable
            // in a capture.
            let fill = src.ip().octets()[3];
            let frame = if protocol == "udp" {
                frame::udp_ipv4(src, dst, &vec![fill; size - UDP_HEADERS])
            } else {
                // PSH|ACK with data: GRO on the receiving veth merges no two of these
                // (PSH flushes), so every frame stays one packet.
                frame::tcp_ipv4(src, dst, &vec![fill; size - TCP_HEADERS])
            };
            debug_assert_eq!(frame.len(), size);
            Ok(Flow {
                description: format!("{} {src} > {dst}", protocol.to_uppercase()),
                frame,
            })
        })
        .collect()
}

/// The generator's program, loaded: count the run, then `XDP_TX`.
pub struct Generator {
    counter: CounterMap,
    program: Xdp,
    /// Keeps the program loaded (aya's `Xdp` made from its info holds its own fd too).
    _loaded: LoadedProgram,
}

/// What one [`Generator::offer`] sent.
#[derive(Debug, Clone)]
pub struct Offered {
    /// Frames offered: the sum of the calls' `repeat`.
    pub frames: u64,
    pub bytes: u64,
    /// Frames per flow, in the order of the flows.
    pub per_flow: Vec<u64>,
    /// `BPF_PROG_RUN` calls made.
    pub calls: u64,
    /// Wall time of all the calls.
    pub elapsed: Duration,
    /// The sending thread's time on a CPU meanwhile (`/proc/thread-self/schedstat`).
    /// The receiving veth's NAPI runs in the softirq that the harness's
    /// `local_bh_enable` triggers, in this thread's context, so (without
    /// `CONFIG_IRQ_TIME_ACCOUNTING`) it is charged here too, unless the kernel deferred
    /// it to ksoftirqd.
    pub thread_cpu_ns: u64,
    /// Packets and bytes the program itself counted meanwhile.
    pub program_counted: (u64, u64),
}

impl Offered {
    pub fn per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Frames per second of the sending thread's own CPU time: the rate it would reach
    /// with a CPU to itself, had no other process taken turns on it.
    /// Wall time the sending thread was not on a CPU, per call: the kernel's wait in
    /// each call, and other processes' turns on the CPU.
    pub fn waited_per_call(&self) -> Duration {
        let off_cpu = self
            .elapsed
            .saturating_sub(Duration::from_nanos(self.thread_cpu_ns));
        off_cpu / self.calls.max(1) as u32
    }

    pub fn per_cpu_second(&self) -> f64 {
        self.frames as f64 / (self.thread_cpu_ns as f64 / 1e9).max(1e-9)
    }
}

/// The calling thread's time on a CPU, ns (first field of its schedstat).
pub fn thread_cpu_ns() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("/proc/thread-self/schedstat has no number")
}

impl Generator {
    pub fn load() -> anyhow::Result<Self> {
        Self::load_rewriting(&[])
    }

    /// A generator that writes `prefix` over the start of every frame before sending
    /// it (a multiple of 4 bytes). A live-frames run initialises a page's frame once
    /// and then recycles the page: whatever the receiver changes in it stays for later
    /// frames. A veth receiving an 802.1Q-tagged frame moves the MAC addresses over the
    /// tag in place (`skb_vlan_untag`), so without this every frame after the first
    /// batch would arrive untagged, its EtherType a piece of the source MAC.
    pub fn load_rewriting(prefix: &[u8]) -> anyhow::Result<Self> {
        ensure!(
            prefix.len().is_multiple_of(4) && prefix.len() <= 64,
            "the rewritten prefix must be whole 32-bit words, at most 64 bytes"
        );
        let counter = CounterMap::create("xtask_loadgen", 1)?;
        let insns = program(prefix)?;
        let maps = MapBinding::counters([&counter]);
        let loaded = LoadedProgram::load_with(Hook::Xdp, "xtask_loadgen", &insns, &maps)
            .context("loading the load generator's XDP program")?;
        let program = loaded.xdp()?;
        Ok(Self {
            counter,
            program,
            _loaded: loaded,
        })
    }

    /// Sends `per_flow` frames of each flow out of `interface`, interleaved in calls of
    /// at most [`CHUNK`]. Call it on a thread inside the sending namespace.
    pub fn offer(&self, interface: &str, flows: &[Flow], per_flow: u64) -> anyhow::Result<Offered> {
        let ifindex = ifindex(interface)?;
        let before = self.counter.read(0)?;
        let mut sent = vec![0u64; flows.len()];
        let (mut calls, mut bytes) = (0u64, 0u64);
        let cpu_start = thread_cpu_ns()?;
        let start = Instant::now();
        while sent.iter().any(|&n| n < per_flow) {
            for (flow, done) in flows.iter().zip(sent.iter_mut()) {
                let repeat = (per_flow - *done).min(u64::from(CHUNK)) as u32;
                if repeat == 0 {
                    continue;
                }
                self.run(&flow.frame, ifindex, repeat)
                    .with_context(|| format!("sending {repeat} frames of {}", flow.description))?;
                *done += u64::from(repeat);
                bytes += u64::from(repeat) * flow.frame.len() as u64;
                calls += 1;
            }
        }
        let elapsed = start.elapsed();
        let thread_cpu_ns = thread_cpu_ns()?.saturating_sub(cpu_start);
        let after = self.counter.read(0)?;
        let offered = Offered {
            frames: sent.iter().sum(),
            bytes,
            per_flow: sent,
            calls,
            elapsed,
            thread_cpu_ns,
            program_counted: (
                after.packets.saturating_sub(before.packets),
                after.bytes.saturating_sub(before.bytes),
            ),
        };
        ensure!(
            offered.program_counted == (offered.frames, offered.bytes),
            "the generator's program ran {} times ({} bytes), but the calls asked for {} frames \
             ({} bytes)",
            offered.program_counted.0,
            offered.program_counted.1,
            offered.frames,
            offered.bytes
        );
        Ok(offered)
    }

    /// One live-frames run of `repeat` copies of `frame`, out of `ifindex`.
    fn run(&self, frame: &[u8], ifindex: u32, repeat: u32) -> anyhow::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each). The kernel wants data = the metadata length (0),
        // data_end = the frame's length.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let result = self
            .program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
        // In live mode the kernel reports no verdict; the counter map says what ran.
        let _ = result;
        Ok(())
    }
}

/// The generator's program: write `prefix` over the frame's first bytes (if any),
/// count the run into slot 0 of counter map 0 (packets += 1, bytes += data_end - data),
/// return `XDP_TX`.
fn program(prefix: &[u8]) -> anyhow::Result<Vec<Insn>> {
    use Operand::{Imm, Reg as R};
    use Reg::*;
    let done = Label::Local(0);
    let written = Label::Local(1);
    let mut asm = Assembler::new();
    asm.push(mov64(R6, R(R1))); // r6 = ctx
    if !prefix.is_empty() {
        for insn in [
            load(Size::W, R2, R6, 0), // r2 = ctx->data
            load(Size::W, R3, R6, 4), // r3 = ctx->data_end
            mov64(R4, R(R2)),
            alu64(AluOp::Add, R4, Imm(prefix.len() as i32)),
            branch64(JmpOp::Gt, R4, R(R3), written), // a shorter frame: leave it
        ] {
            asm.push(insn);
        }
        for (i, word) in prefix.chunks_exact(4).enumerate() {
            let value = i32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            asm.push(store(Size::W, R2, (i * 4) as i16, Imm(value)));
        }
        asm.label(written);
    }
    for insn in [
        store(Size::W, R10, -4, Imm(0)),
        mov64(R2, R(R10)),
        alu64(AluOp::Add, R2, Imm(-4)), // r2 = &key (0)
        Insn::LoadMap {
            dst: R1,
            map: MapRef::Counters(0),
        },
        Insn::Call(Helper::MapLookupElem), // r0 = &counters[0] of this CPU
        branch64(JmpOp::Eq, R0, Imm(0), done),
        load(Size::DW, R1, R0, 0),
        alu64(AluOp::Add, R1, Imm(1)),
        store(Size::DW, R0, 0, R(R1)), // packets += 1
        load(Size::W, R2, R6, 4),      // r2 = ctx->data_end
        load(Size::W, R3, R6, 0),      // r3 = ctx->data
        alu64(AluOp::Sub, R2, R(R3)),  // r2 = the frame's length
        load(Size::DW, R1, R0, 8),
        alu64(AluOp::Add, R1, R(R2)),
        store(Size::DW, R0, 8, R(R1)), // bytes += length
    ] {
        asm.push(insn);
    }
    asm.label(done);
    asm.push(mov64(R0, Imm(XDP_TX)));
    asm.push(Insn::Exit);
    Ok(asm.finish()?)
}

/// The index of `interface` in the calling thread's network namespace.
fn ifindex(interface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!(
            "no interface {interface} in this network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program assembles (labels resolve) without a kernel; the kernel's verdict
    /// comes with the first `Generator::load`.
    #[test]
    fn program_assembles() {
        let insns = program(&[]).expect("assembles");
        assert_eq!(insns.last(), Some(&Insn::Exit));
        assert!(insns.contains(&Insn::LoadMap {
            dst: Reg::R1,
            map: MapRef::Counters(0)
        }));
        let rewriting = program(&[1, 2, 3, 4, 5, 6, 7, 8]).expect("assembles");
        assert!(rewriting.contains(&store(
            Size::W,
            Reg::R2,
            4,
            Operand::Imm(i32::from_ne_bytes([5, 6, 7, 8]))
        )));
    }

    #[test]
    fn flows_have_the_asked_size_and_differ() {
        for size in [64, 512, 1500] {
            let flows = flows(size).expect("flows");
            assert_eq!(flows.len(), 8);
            for flow in &flows {
                assert_eq!(flow.frame.len(), size, "{}", flow.description);
            }
            for (i, a) in flows.iter().enumerate() {
                for b in &flows[i + 1..] {
                    assert_ne!(a.frame, b.frame);
                }
            }
        }
        assert!(flows(59).is_err());
        assert!(flows(1515).is_err());
    }
}
