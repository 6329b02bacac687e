//! `packets wire` ([`Count::Wire`]): a filter counts the frames a GRO/GSO packet was on
//! the wire, each with its own headers, while a `stack` filter beside it in the same
//! shared program counts the packet as tcpdump shows it. The test harness
//! (`BPF_PROG_RUN`) takes `gso_segs` and `gso_size` in the `__sk_buff` it is given,
//! as GRO or TSO would have set them.

use std::os::fd::{AsFd, AsRawFd};

use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::SharedProgram;
use capstats_ebpf::translate::{Count, Hook, Placement};

/// An Ethernet frame of IPv4 (IHL `ihl` words) and TCP (data offset `doff` words) or
/// UDP, with `payload` bytes after the headers.
fn frame(ipv6: bool, proto: u8, options: usize, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    let l4_len = if proto == 6 { 20 + options } else { 8 };
    if ipv6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((l4_len + payload) as u16).to_be_bytes());
        ip[6] = proto;
        ip[7] = 64;
        ip[23] = 1;
        ip[39] = 2;
        f.extend_from_slice(&ip);
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4_len + payload) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&ip);
    }
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
    if proto == 6 {
        l4[12] = (((20 + options) / 4) as u8) << 4;
        l4[13] = 0x10;
    } else {
        l4[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    }
    f.extend_from_slice(&l4);
    f.extend(std::iter::repeat_n(0xab, payload));
    f
}

/// `struct __sk_buff` up to `gso_size` (include/uapi/linux/bpf.h), zeroed but for
/// the GSO fields.
fn skb_ctx(gso_segs: u32, gso_size: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// `BPF_PROG_TEST_RUN` of `program` on `data` with context `ctx`.
fn run(program: &LoadedProgram, data: &[u8], ctx: &[u8]) {
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }
    let attr = TestRun {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestRun::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; the pointers
    // outlive the call and no output buffers are given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &attr as *const TestRun,
            size_of::<TestRun>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {} (this test needs root)",
        std::io::Error::last_os_error()
    );
}

/// A `stack` and a `wire` session of each expression in one shared program for
/// `hook` (loaded as `loaded_as`); each case's frame run once with its GSO fields;
/// returns (stack, wire) counters per case.
fn counts(hook: Hook, cases: &[(Vec<u8>, u32)]) -> Vec<((u64, u64), (u64, u64))> {
    let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, "ip or ip6", 0).unwrap();
    let mut out = Vec::new();
    for (data, segs) in cases {
        let stack = CounterMap::create("wire_stack", 1).unwrap();
        let mut wire = CounterMap::create("wire_wire", 1).unwrap();
        wire.set_count(Count::Wire);
        let counted = [(filter.program(), &stack), (filter.program(), &wire)];
        let shared =
            SharedProgram::build_at("wire", &counted, &[0, 1], Placement::on(hook)).unwrap();
        assert_eq!(
            shared.plan.items.len(),
            2,
            "a stack and a wire filter are never one group"
        );
        let program = LoadedProgram::load_with(hook, "wire", &shared.insns, &shared.binding())
            .unwrap_or_else(|e| panic!("{hook}: {e}"));
        run(&program, data, &skb_ctx(*segs, 1000));
        let s = stack.read(0).unwrap();
        let w = wire.read(0).unwrap();
        out.push(((s.packets, s.bytes), (w.packets, w.bytes)));
    }
    out
}

#[test]
fn wire_counts_each_segment_with_its_headers() {
    // (frame, gso_segs, headers of one segment: 14 + IP + L4)
    let cases = [
        (frame(false, 6, 12, 1400), 3, 14 + 20 + 32),
        (frame(true, 6, 0, 1300), 2, 14 + 40 + 20),
        (frame(false, 17, 0, 1200), 4, 14 + 20 + 8),
        // Not GSO: gso_segs 0 or 1 is one frame.
        (frame(false, 6, 0, 100), 0, 0),
        (frame(false, 6, 0, 100), 1, 0),
        // Headers it does not parse (ICMP): the segments, with one set of headers.
        (frame(false, 1, 0, 1000), 3, 0),
    ];
    let input: Vec<(Vec<u8>, u32)> = cases.iter().map(|(f, s, _)| (f.clone(), *s)).collect();
    for hook in [Hook::TcIngress] {
        for (got, (data, segs, headers)) in counts(hook, &input).into_iter().zip(&cases) {
            let len = data.len() as u64;
            let frames = u64::from((*segs).max(1));
            assert_eq!(
                got.0,
                (1, len),
                "{hook} stack, segs {segs}: the packet as it is"
            );
            assert_eq!(
                got.1,
                (frames, len + (frames - 1) * headers),
                "{hook} wire, segs {segs}: each segment with its own headers"
            );
        }
    }
}

/// The socket hook reads `gso_segs` too (the verifier allows it in SOCKET_FILTER),
/// so `packets wire` works there; a cooked (`interface any`) one as well.
#[test]
fn socket_filters_with_wire_load() {
    let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, "tcp", 0).unwrap();
    let mut wire = CounterMap::create("wire_sock", 1).unwrap();
    wire.set_count(Count::Wire);
    for cooked in [None, Some(20)] {
        let placement = Placement {
            cooked,
            ..Placement::on(Hook::Socket)
        };
        let shared =
            SharedProgram::build_at("wire", &[(filter.program(), &wire)], &[0], placement).unwrap();
        LoadedProgram::load_with(Hook::Socket, "wire", &shared.insns, &shared.binding())
            .unwrap_or_else(|e| panic!("socket (cooked {cooked:?}): {e}"));
    }
}
