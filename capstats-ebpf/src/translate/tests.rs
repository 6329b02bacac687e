use super::*;
use crate::cbpf::{RawInsn, SKF_AD_OFF};

/// Slot 3 of the program's counter map 0: `map[counters]`, no fd.
const COUNTER: CounterSlot = CounterSlot { map: 0, slot: 3 };

/// `(code, jt, jf, k)`, as `tcpdump -dd` prints it.
type Raw = (u16, u8, u8, u32);

fn listing(raw: &[Raw], hook: Hook) -> Vec<String> {
    let raw: Vec<RawInsn> = raw
        .iter()
        .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
        .collect();
    let program = Program::new(&raw).unwrap();
    translate(&program, hook, COUNTER)
        .unwrap()
        .iter()
        .map(Insn::to_string)
        .collect()
}

/// The instructions one classic instruction becomes: the labeled listing between
/// the prologue and the `c{n}:` label of an appended final `ret #1`.
fn body(raw: &[Raw]) -> Vec<String> {
    let mut program = raw.to_vec();
    program.push((0x06, 0, 0, 1));
    let ret = format!("c{}:", raw.len());
    let raw: Vec<RawInsn> = program
        .iter()
        .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
        .collect();
    let program = Program::new(&raw).unwrap();
    let listing = translate_listing(&program, Hook::Socket, COUNTER).unwrap();
    listing
        .lines()
        .skip_while(|l| l.trim() != "w7 = 0") // the prologue, then A = 0; X = 0
        .skip(1)
        .take_while(|l| *l != ret && *l != "accept:" && *l != "reject:")
        .filter(|l| !(l.starts_with('c') && l.ends_with(':')))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn a_whole_program_with_prologue_and_counting_epilogue() {
    // tcpdump -d ip: ldh [12]; jeq #0x800 jt 2 jf 3; ret #262144; ret #0
    let lines = listing(
        &[
            (0x28, 0, 0, 12),
            (0x15, 0, 1, 0x800),
            (0x06, 0, 0, 262_144),
            (0x06, 0, 0, 0),
        ],
        Hook::Socket,
    );
    // The socket filter: wire length (skb->len + 4 if the kernel holds a VLAN tag)
    // once, the first bytes copied to the stack once (their number saved, and reloaded
    // before each filter), then the filter, then counting.
    assert_eq!(
        lines,
        [
            "r6 = r1",
            "r1 = *(u32 *)(r6 + 0)",
            "r2 = *(u32 *)(r6 + 20)",
            "r2 <<= 2",
            "r1 += r2",
            "*(u64 *)(r10 - 160) = r1",
            "r9 = *(u32 *)(r6 + 0)",
            "if r9 <= 128 goto +1",
            "r9 = 128",
            "*(u64 *)(r10 - 168) = 0",
            "if r9 == 0 goto +11",
            "r1 = r6",
            "w2 = 0",
            "r3 = r10",
            "r3 += -294",
            "r4 = r9",
            "r4 -= 1",
            "r4 &= 127",
            "r4 += 1",
            "call bpf_skb_load_bytes#26",
            "if r0 == 0 goto +1",
            "r9 = 0",
            "*(u64 *)(r10 - 304) = r9",
            "r9 = *(u64 *)(r10 - 304)",
            "r9 &= 255",
            "w0 = 0",
            "w7 = 0",
            "if r9 < 14 goto +19",
            "r0 = *(u16 *)(r10 - 282)",
            "r0 = be16 r0",
            "if w0 != 0x800 goto +1",
            "goto +1",
            "goto +14",
            "r1 = map[counters]",
            "*(u64 *)(r10 - 136) = 3",
            "r2 = r10",
            "r2 += -136",
            "call bpf_map_lookup_elem#1",
            "if r0 == 0 goto +7",
            "r1 = *(u64 *)(r0 + 0)",
            "r1 += 1",
            "*(u64 *)(r0 + 0) = r1",
            "r1 = *(u64 *)(r10 - 160)",
            "r2 = *(u64 *)(r0 + 8)",
            "r2 += r1",
            "*(u64 *)(r0 + 8) = r2",
            "r0 = 0",
            "exit",
        ]
    );
    // TC continues the chain instead: TC_ACT_UNSPEC.
    let tc = listing(&[(0x06, 0, 0, 1)], Hook::TcIngress);
    assert_eq!(tc[tc.len() - 2..], ["r0 = -1", "exit"]);
}

#[test]
fn each_classic_instruction_becomes_these_ebpf_instructions() {
    let ad = |n: u32| SKF_AD_OFF + n;
    let table: &[(&str, &[Raw], &[&str])] = &[
        // The socket filter reads its stack copy of the first 128 bytes (byte 0 at
        // r10 - 294, 2 bytes into its area, so that the IPv4 addresses behind Ethernet,
        // at 26 and 30, are aligned), after checking the packet is long enough (r9 =
        // bytes copied); an unaligned offset byte by byte (the verifier wants aligned
        // stack reads).
        (
            "ld [k], an IPv4 source address",
            &[(0x20, 0, 0, 26)],
            &[
                "if r9 < 30 goto reject",
                "r0 = *(u32 *)(r10 - 268)",
                "r0 = be32 r0",
            ],
        ),
        (
            "ld [k], unaligned",
            &[(0x20, 0, 0, 28)],
            &[
                "if r9 < 32 goto reject",
                "r0 = *(u8 *)(r10 - 266)",
                "w0 <<= 8",
                "r3 = *(u8 *)(r10 - 265)",
                "w0 |= w3",
                "w0 <<= 8",
                "r3 = *(u8 *)(r10 - 264)",
                "w0 |= w3",
                "w0 <<= 8",
                "r3 = *(u8 *)(r10 - 263)",
                "w0 |= w3",
            ],
        ),
        (
            "ldh [k]",
            &[(0x28, 0, 0, 12)],
            &[
                "if r9 < 14 goto reject",
                "r0 = *(u16 *)(r10 - 282)",
                "r0 = be16 r0",
            ],
        ),
        (
            "ldb [k]",
            &[(0x30, 0, 0, 23)],
            &["if r9 < 24 goto reject", "r0 = *(u8 *)(r10 - 271)"],
        ),
        // Beyond any packet: straight to the return; what follows is dropped unreachable.
        (
            "ldb [k >= 2^31]",
            &[(0x30, 0, 0, 0x8000_0000)],
            &["goto reject"],
        ),
        // X bounded by ldx msh (<= 60): no 2^31 guard. In the copy: masked (a no-op the
        // verifier needs) and read byte by byte; past it, the helper.
        (
            "ldh [x + k], x small",
            &[(0xb1, 0, 0, 14), (0x48, 0, 0, 16)],
            &[
                "*(u64 *)(r10 - 144) = r0",
                "if r9 < 15 goto reject",
                "r0 = *(u8 *)(r10 - 280)",
                "w0 &= 0xf",
                "w0 <<= 2",
                "r7 = r0",
                "r0 = *(u32 *)(r10 - 144)",
                "r1 = r7",
                "r1 += 16",
                "r3 = r9",
                "r3 -= r1",
                "if r3 s< 2 goto l2",
                "r1 &= 127",
                "r2 = r10",
                "r2 += r1",
                "r0 = *(u8 *)(r2 - 294)",
                "w0 <<= 8",
                "r3 = *(u8 *)(r2 - 293)",
                "w0 |= w3",
                "goto l3",
                "l2:",
                "r2 = r1",
                "r1 = r6",
                "r3 = r10",
                "r3 += -152",
                "w4 = 2",
                "call bpf_skb_load_bytes#26",
                "if r0 s< 0 goto reject",
                "r0 = *(u16 *)(r10 - 152)",
                "r0 = be16 r0",
                "l3:",
            ],
        ),
        // X unknown: X + k must not pass 2^31 (libpcap's bounds), checked in 64 bits.
        (
            "ldb [x + k], x unknown",
            &[(0x81, 0, 0, 0), (0x50, 0, 0, 14)],
            &[
                "r7 = *(u32 *)(r6 + 0)",
                "r1 = r7",
                "r1 += 14",
                "if r1 > 0x7fffffff goto reject",
                "r3 = r9",
                "r3 -= r1",
                "if r3 s< 1 goto l2",
                "r1 &= 127",
                "r2 = r10",
                "r2 += r1",
                "r0 = *(u8 *)(r2 - 294)",
                "goto l3",
                "l2:",
                "r2 = r1",
                "r1 = r6",
                "r3 = r10",
                "r3 += -152",
                "w4 = 1",
                "call bpf_skb_load_bytes#26",
                "if r0 s< 0 goto reject",
                "r0 = *(u8 *)(r10 - 152)",
                "l3:",
            ],
        ),
        ("ld #pktlen", &[(0x80, 0, 0, 0)], &["r0 = *(u32 *)(r6 + 0)"]),
        ("ld #k", &[(0x00, 0, 0, 0xffff_ffff)], &["w0 = 0xffffffff"]),
        (
            "st/ld M[k]",
            &[(0x02, 0, 0, 0), (0x60, 0, 0, 0)],
            &["*(u64 *)(r10 - 128) = r0", "r0 = *(u32 *)(r10 - 128)"],
        ),
        (
            "stx/ldx M[k]",
            &[(0x03, 0, 0, 15), (0x61, 0, 0, 15)],
            &["*(u64 *)(r10 - 8) = r7", "r7 = *(u32 *)(r10 - 8)"],
        ),
        ("ldx #k", &[(0x01, 0, 0, 4)], &["w7 = 4"]),
        ("add #k", &[(0x04, 0, 0, 1)], &["w0 += 1"]),
        (
            "rsh x",
            &[(0x7c, 0, 0, 0)],
            &[
                "if w7 < 0x20 goto l2",
                "w0 = 0",
                "goto l3",
                "l2:",
                "w0 >>= w7",
                "l3:",
            ],
        ),
        (
            "div x",
            &[(0x3c, 0, 0, 0)],
            &["if w7 == 0 goto reject", "w0 /= w7"],
        ),
        ("mod #k", &[(0x94, 0, 0, 7)], &["w0 %= 7"]),
        ("neg", &[(0x84, 0, 0, 0)], &["w0 = -w0"]),
        (
            "tax; txa",
            &[(0x07, 0, 0, 0), (0x87, 0, 0, 0)],
            &["w7 = w0", "w0 = w7"],
        ),
        (
            "jeq #k jt 0",
            &[(0x15, 0, 1, 6), (0x06, 0, 0, 0)],
            &["if w0 != 6 goto c2", "goto reject"],
        ),
        (
            "jgt x jf 0",
            &[(0x2d, 1, 0, 0), (0x06, 0, 0, 0)],
            &["if w0 > w7 goto c2", "goto reject"],
        ),
        (
            "jset #k",
            &[(0x45, 0, 1, 0x1fff), (0x06, 0, 0, 0)],
            &["if w0 & 0x1fff goto c1", "goto c2", "goto reject"],
        ),
        (
            "ret a",
            &[(0x16, 0, 0, 0)],
            &["if w0 != 0 goto accept", "goto reject"],
        ),
        (
            "ldb [vlanp]",
            &[(0x30, 0, 0, ad(48))],
            &["r0 = *(u32 *)(r6 + 20)"],
        ),
        (
            "ldb [vlan_tci]",
            &[(0x30, 0, 0, ad(44))],
            &["r0 = *(u32 *)(r6 + 24)"],
        ),
        (
            "ldh [type]",
            &[(0x28, 0, 0, ad(4))],
            &["r0 = *(u32 *)(r6 + 4)"],
        ),
        (
            "ld [ifidx]",
            &[(0x20, 0, 0, ad(8))],
            &["r0 = *(u32 *)(r6 + 40)"],
        ),
        (
            "ldh [proto]",
            &[(0x28, 0, 0, ad(0))],
            &["r0 = *(u32 *)(r6 + 16)", "r0 = be16 r0"],
        ),
        (
            "ld [random]",
            &[(0x20, 0, 0, ad(56))],
            &["call bpf_get_prandom_u32#7"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, raw, want) in table {
        let got = body(raw);
        if got != *want {
            wrong.push(format!("{name}: {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// protochain's loop: the backward jump (here `ja 1`) is guarded by may_goto.
#[test]
fn a_backward_ja_becomes_a_budgeted_loop() {
    let lines = listing(
        &[
            (0x00, 0, 0, 3),
            (0x15, 2, 0, 0),
            (0x14, 0, 0, 1),
            (0x05, 0, 0, -3i32 as u32),
            (0x06, 0, 0, 1),
        ],
        Hook::TcIngress,
    );
    let at = lines.iter().position(|l| l == "w0 = 3").unwrap();
    assert_eq!(
        lines[at..at + 6],
        [
            "w0 = 3",
            "if w0 == 0 goto +3",
            "w0 -= 1",
            "may_goto +16",
            "goto -4",
            "goto +0"
        ]
    );
}

/// XDP reads the frame directly, bounds-checked, with the helper for what lies beyond
/// the first buffer; it has no skb metadata.
#[test]
fn xdp_loads_directly_and_falls_back_to_the_helper() {
    let raw: Vec<RawInsn> = [(0x28, 0, 0, 12), (0x06, 0, 0, 1)]
        .iter()
        .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
        .collect();
    let program = Program::new(&raw).unwrap();
    let listing = translate_listing(&program, Hook::Xdp, COUNTER).unwrap();
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    assert_eq!(
        lines[..24],
        [
            "r6 = r1",
            "r1 = r6",
            "call bpf_xdp_get_buff_len#188",
            "*(u64 *)(r10 - 160) = r0",
            "r9 = *(u32 *)(r6 + 4)",
            "w0 = 0",
            "w7 = 0",
            "c0:",
            "r1 = *(u32 *)(r6 + 0)",
            "r1 += 12",
            "r2 = r1",
            "r2 += 2",
            "if r2 > r9 goto l0",
            "r0 = *(u16 *)(r1 + 0)",
            "goto l1",
            "l0:",
            "w2 = 0xc",
            "r1 = r6",
            "r3 = r10",
            "r3 += -152",
            "w4 = 2",
            "call bpf_xdp_load_bytes#189",
            "if r0 s< 0 goto reject",
            "r0 = *(u16 *)(r10 - 152)",
        ]
    );
    assert_eq!(lines[24..27], ["l1:", "r0 = be16 r0", "c1:"]);
    // The frame's length counts every buffer; the return lets the frame pass.
    assert!(
        listing.contains("call bpf_xdp_get_buff_len#188"),
        "{listing}"
    );
    assert!(
        listing.ends_with("reject:\n    r0 = 2\n    exit\n"),
        "{listing}"
    );

    let vlan = [(0x30, 0, 0, SKF_AD_OFF + 48), (0x06, 0, 0, 1)];
    let raw: Vec<RawInsn> = vlan
        .iter()
        .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
        .collect();
    let err = translate(&Program::new(&raw).unwrap(), Hook::Xdp, COUNTER).unwrap_err();
    assert!(err.to_string().contains("VLAN tag metadata"), "{err}");
}

/// Several filters in one program, on every hook: each counts into its own slot, and
/// the labels say which filter they belong to.
#[test]
fn several_filters_share_one_program_on_every_hook() {
    let raw = |list: &[Raw]| -> Program {
        let raw: Vec<RawInsn> = list
            .iter()
            .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
            .collect();
        Program::new(&raw).unwrap()
    };
    let a = raw(&[(0x06, 0, 0, 1)]);
    let b = raw(&[(0x06, 0, 0, 7)]);
    let (first, second) = (
        CounterSlot { map: 0, slot: 0 },
        CounterSlot { map: 1, slot: 5 },
    );
    for hook in [Hook::Socket, Hook::TcIngress, Hook::Xdp] {
        let insns = translate_all(&[(&a, first), (&b, second)], hook).unwrap();
        let text: Vec<String> = insns.iter().map(Insn::to_string).collect();
        // Each filter's counting: its map, then its slot as the key.
        for key in [
            ["r1 = map[counters]", "*(u64 *)(r10 - 136) = 0"],
            ["r1 = map[counters1]", "*(u64 *)(r10 - 136) = 5"],
        ] {
            assert!(text.windows(2).any(|w| w == key), "{hook}: {text:?}");
        }
        let maps: Vec<MapRef> = insns.iter().filter_map(Insn::map).collect();
        assert_eq!(maps, [MapRef::Counters(0), MapRef::Counters(1)], "{hook}");
    }
}

/// At TC egress every packet is outgoing, as a packet socket sees it, whatever
/// `skb->pkt_type` says there.
#[test]
fn tc_egress_knows_its_packets_are_outgoing() {
    let raw: Vec<RawInsn> = [(0x28, 0, 0, SKF_AD_OFF + 4), (0x16, 0, 0, 0)]
        .iter()
        .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
        .collect();
    let program = Program::new(&raw).unwrap();
    let text = |insns: Vec<Insn>| insns.iter().map(Insn::to_string).collect::<Vec<_>>();
    let ingress = text(translate(&program, Hook::TcIngress, COUNTER).unwrap());
    let egress = text(translate(&program, Hook::TcEgress, COUNTER).unwrap());
    // After the prologue and A = 0; X = 0: the load of the type.
    let at = ingress.iter().position(|l| l == "w7 = 0").unwrap() + 1;
    assert_eq!(ingress[at], "r0 = *(u32 *)(r6 + 4)");
    assert_eq!(egress[at], "w0 = 4");
    assert_eq!(ingress[..at], egress[..at]);
    assert_eq!(ingress[at + 1..], egress[at + 1..]);
    // TC reads the skb's linear part directly: its end loaded once, in the prologue.
    assert_eq!(ingress[at - 3], "r9 = *(u32 *)(r6 + 80)");
}

/// A program of a chain ends in a tail call to the next entry of the chain's prog
/// array, before the neutral return it falls through to when that entry is empty;
/// without a next program it ends as any other.
#[test]
fn a_chained_program_tail_calls_the_next_before_returning() {
    let raw: Vec<RawInsn> = vec![RawInsn::new(0x06, 0, 0, 1)];
    let program = Program::new(&raw).unwrap();
    let text = |insns: Vec<Insn>| insns.iter().map(Insn::to_string).collect::<Vec<_>>();
    let next = TailCall { index: 3 };
    for (hook, neutral) in [(Hook::TcIngress, "r0 = -1"), (Hook::Xdp, "r0 = 2")] {
        let alone = text(translate_all(&[(&program, COUNTER)], hook).unwrap());
        let chained = text(translate_chained(&[(&program, COUNTER)], hook, Some(next)).unwrap());
        let end = alone.len() - 2;
        assert_eq!(chained[..end], alone[..end], "{hook}");
        assert_eq!(
            chained[end..],
            [
                "r1 = r6",
                "r2 = map[chain]",
                "w3 = 3",
                "call bpf_tail_call#12",
                neutral,
                "exit"
            ],
            "{hook}"
        );
        let unchained = text(translate_chained(&[(&program, COUNTER)], hook, None).unwrap());
        assert_eq!(unchained, alone, "{hook}");
    }
    // No filters: the prologue, then on to the next program.
    let empty = text(translate_chained(&[], Hook::TcEgress, Some(next)).unwrap());
    assert_eq!(
        empty[empty.len() - 6..empty.len() - 2],
        [
            "r1 = r6",
            "r2 = map[chain]",
            "w3 = 3",
            "call bpf_tail_call#12"
        ]
    );
    assert!(
        !empty.iter().any(|l| l.contains("map[counters")),
        "{empty:?}"
    );
}

/// Programs are data: translating the same filters twice gives equal instruction
/// lists, whatever maps they will count into, and the listing names each map by its
/// role. A shared program reads its dispatch map and counter table by reference too.
#[test]
fn programs_compare_and_print_as_data_before_any_map_exists() {
    use crate::filter::Filter;
    use crate::shared::plan::Plan;

    let compile = |e: &str| Filter::for_linktype(pcap::Linktype::ETHERNET, e, 0).unwrap();
    let filters = [compile("udp dst port 53"), compile("udp dst port 54")];
    let programs: Vec<&Program> = filters.iter().map(Filter::program).collect();
    for hook in [Hook::Socket, Hook::TcIngress, Hook::Xdp] {
        let plan = Plan::new(&programs);
        assert_eq!(plan.grouped(), 2, "one shape, one group");
        let placement = Placement {
            next: Some(TailCall { index: 1 }),
            ..Placement::on(hook)
        };
        let shared =
            || translate_shared(&programs, &[4, 9], &plan, placement, SharedMaps::default());
        assert_eq!(shared().unwrap(), shared().unwrap(), "{hook}");
        let maps: std::collections::BTreeSet<MapRef> =
            shared().unwrap().iter().filter_map(Insn::map).collect();
        assert_eq!(
            maps.into_iter().collect::<Vec<_>>(),
            [
                MapRef::Dispatch,
                MapRef::CounterTable,
                MapRef::ProgArray,
                MapRef::Presence
            ],
            "{hook}"
        );
        let listing =
            translate_shared_listing(&programs, &[4, 9], &plan, placement, SharedMaps::default())
                .unwrap();
        for line in [
            "r1 = map[dispatch]",
            "r5 = &map[presence].value[0]",
            "r1 = map[table]",
            "r2 = map[chain]",
        ] {
            assert!(listing.contains(line), "{hook}: no `{line}` in\n{listing}");
        }
    }
    // Filters alone: counter map i for filter i, in order.
    let alone = translate_all(
        &[
            (programs[0], CounterSlot { map: 0, slot: 0 }),
            (programs[1], CounterSlot { map: 1, slot: 0 }),
        ],
        Hook::TcIngress,
    )
    .unwrap();
    let maps: Vec<MapRef> = alone.iter().filter_map(Insn::map).collect();
    assert_eq!(maps, [MapRef::Counters(0), MapRef::Counters(1)]);
}
