//! Every classic opcode class, as data: (program, packet, expected verdict), run by
//! libpcap's interpreter and by the kernel on our translation. Both must give the
//! expected verdict, so a case can neither hide a translator bug nor a wrong table row.
//!
//! The packet is 60 bytes with `P[i] = i`, so any load's value is known by heart.

mod common;

use capstats_ebpf::cbpf::{Program, RawInsn};
use capstats_ebpf::filter::libpcap_run;
use capstats_ebpf::testrun::{KernelFilter, Verdict};
use capstats_ebpf::translate::Hook;

/// `(code, jt, jf, k)`, as `tcpdump -dd` prints it.
type Raw = (u16, u8, u8, u32);

const RET_A: Raw = (0x16, 0, 0, 0);
const ACCEPT: Raw = (0x06, 0, 0, 1);
const REJECT: Raw = (0x06, 0, 0, 0);

/// `jeq #k jt +0 jf +1; ret #1; ret #0`: matches when A == k.
fn a_is(k: u32) -> [Raw; 3] {
    [(0x15, 0, 1, k), ACCEPT, REJECT]
}

fn case(
    name: &'static str,
    prefix: &[(u16, u8, u8, u32)],
    suffix: &[(u16, u8, u8, u32)],
    want: bool,
) -> Case {
    Case {
        name,
        raw: prefix
            .iter()
            .chain(suffix)
            .map(|&(code, jt, jf, k)| RawInsn::new(code, jt, jf, k))
            .collect(),
        want,
    }
}

struct Case {
    name: &'static str,
    raw: Vec<RawInsn>,
    want: bool,
}

fn cases() -> Vec<Case> {
    vec![
        // BPF_LD | BPF_ABS, all sizes, big endian; out of bounds rejects.
        case("ld [4]", &[(0x20, 0, 0, 4)], &a_is(0x0405_0607), true),
        case("ldh [12]", &[(0x28, 0, 0, 12)], &a_is(0x0c0d), true),
        case("ldb [59]", &[(0x30, 0, 0, 59)], &a_is(59), true),
        case(
            "ld [57] past the end",
            &[(0x20, 0, 0, 57), ACCEPT],
            &[],
            false,
        ),
        case(
            "ldb [60] past the end",
            &[(0x30, 0, 0, 60), ACCEPT],
            &[],
            false,
        ),
        case(
            "ldh [0x7fffffff]",
            &[(0x28, 0, 0, 0x7fff_ffff), ACCEPT],
            &[],
            false,
        ),
        case(
            "ldb [0x80000000]",
            &[(0x30, 0, 0, 0x8000_0000), ACCEPT],
            &[],
            false,
        ),
        // BPF_LD | BPF_IND.
        case(
            "ldb [x + 5]",
            &[(0x01, 0, 0, 10), (0x50, 0, 0, 5)],
            &a_is(15),
            true,
        ),
        case(
            "ldh [x + 0]",
            &[(0x01, 0, 0, 58), (0x48, 0, 0, 0)],
            &a_is(0x3a3b),
            true,
        ),
        case(
            "ld [x + 1] past the end",
            &[(0x01, 0, 0, 56), (0x40, 0, 0, 1), ACCEPT],
            &[],
            false,
        ),
        case(
            "ldb [x + k] where x + k wraps to 16",
            &[(0x01, 0, 0, 0xffff_fff0), (0x50, 0, 0, 0x20), ACCEPT],
            &[],
            false,
        ),
        case(
            "ldb [x + 0] at 2^31",
            &[(0x01, 0, 0, 0x8000_0000), (0x50, 0, 0, 0), ACCEPT],
            &[],
            false,
        ),
        case(
            "ldb [x + k] from a loaded x",
            &[(0x30, 0, 0, 3), (0x07, 0, 0, 0), (0x50, 0, 0, 1)],
            &a_is(4),
            true,
        ),
        // BPF_LD | BPF_LEN / IMM / MEM; BPF_ST / BPF_STX.
        case("ld #pktlen", &[(0x80, 0, 0, 0)], &a_is(60), true),
        case(
            "ld #k",
            &[(0x00, 0, 0, 0xdead_beef)],
            &a_is(0xdead_beef),
            true,
        ),
        case(
            "st M[3]; ld M[3]",
            &[
                (0x00, 0, 0, 77),
                (0x02, 0, 0, 3),
                (0x00, 0, 0, 0),
                (0x60, 0, 0, 3),
            ],
            &a_is(77),
            true,
        ),
        case(
            "stx M[15]; ld M[15]",
            &[
                (0x01, 0, 0, 0xffff_ffff),
                (0x03, 0, 0, 15),
                (0x60, 0, 0, 15),
            ],
            &a_is(0xffff_ffff),
            true,
        ),
        // BPF_LDX.
        case(
            "ldx #pktlen; txa",
            &[(0x81, 0, 0, 0), (0x87, 0, 0, 0)],
            &a_is(60),
            true,
        ),
        case(
            "ldx M[0]; txa",
            &[
                (0x00, 0, 0, 9),
                (0x02, 0, 0, 0),
                (0x61, 0, 0, 0),
                (0x87, 0, 0, 0),
            ],
            &a_is(9),
            true,
        ),
        case(
            "ldxb 4*([14]&0xf)",
            &[(0xb1, 0, 0, 14), (0x87, 0, 0, 0)],
            &a_is(56),
            true,
        ),
        case(
            "ldxb keeps A",
            &[(0x00, 0, 0, 5), (0xb1, 0, 0, 14)],
            &a_is(5),
            true,
        ),
        case("ldxb past the end", &[(0xb1, 0, 0, 60), ACCEPT], &[], false),
        // BPF_ALU with K: 32-bit, wrapping.
        case(
            "add #k wraps",
            &[(0x00, 0, 0, 0xffff_ffff), (0x04, 0, 0, 1)],
            &a_is(0),
            true,
        ),
        case(
            "sub #k wraps",
            &[(0x00, 0, 0, 0), (0x14, 0, 0, 1)],
            &a_is(0xffff_ffff),
            true,
        ),
        case(
            "mul #k wraps",
            &[(0x00, 0, 0, 0x1_0000), (0x24, 0, 0, 0x1_0000)],
            &a_is(0),
            true,
        ),
        case(
            "div #k unsigned",
            &[(0x00, 0, 0, 0xffff_fffe), (0x34, 0, 0, 2)],
            &a_is(0x7fff_ffff),
            true,
        ),
        case(
            "mod #k",
            &[(0x00, 0, 0, 17), (0x94, 0, 0, 5)],
            &a_is(2),
            true,
        ),
        case(
            "and #k",
            &[(0x00, 0, 0, 0xff0f), (0x54, 0, 0, 0x0ff0)],
            &a_is(0x0f00),
            true,
        ),
        case(
            "or #k",
            &[(0x00, 0, 0, 0xf0), (0x44, 0, 0, 0x0f)],
            &a_is(0xff),
            true,
        ),
        case(
            "xor #k",
            &[(0x00, 0, 0, 0xff), (0xa4, 0, 0, 0x0f)],
            &a_is(0xf0),
            true,
        ),
        case(
            "lsh #31",
            &[(0x00, 0, 0, 3), (0x64, 0, 0, 31)],
            &a_is(0x8000_0000),
            true,
        ),
        case(
            "rsh #31 is logical",
            &[(0x00, 0, 0, 0x8000_0000), (0x74, 0, 0, 31)],
            &a_is(1),
            true,
        ),
        case(
            "neg",
            &[(0x00, 0, 0, 1), (0x84, 0, 0, 0)],
            &a_is(0xffff_ffff),
            true,
        ),
        // BPF_ALU with X; division by X = 0 ends with no match; big shifts give 0.
        case(
            "add x",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 2), (0x0c, 0, 0, 0)],
            &a_is(42),
            true,
        ),
        case(
            "sub x",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 2), (0x1c, 0, 0, 0)],
            &a_is(38),
            true,
        ),
        case(
            "mul x",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 2), (0x2c, 0, 0, 0)],
            &a_is(80),
            true,
        ),
        case(
            "div x",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 3), (0x3c, 0, 0, 0)],
            &a_is(13),
            true,
        ),
        case(
            "div x = 0",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 0), (0x3c, 0, 0, 0), ACCEPT],
            &[],
            false,
        ),
        case(
            "mod x",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 3), (0x9c, 0, 0, 0)],
            &a_is(1),
            true,
        ),
        case(
            "mod x = 0",
            &[(0x00, 0, 0, 40), (0x01, 0, 0, 0), (0x9c, 0, 0, 0), ACCEPT],
            &[],
            false,
        ),
        case(
            "and x",
            &[(0x00, 0, 0, 6), (0x01, 0, 0, 3), (0x5c, 0, 0, 0)],
            &a_is(2),
            true,
        ),
        case(
            "or x",
            &[(0x00, 0, 0, 6), (0x01, 0, 0, 3), (0x4c, 0, 0, 0)],
            &a_is(7),
            true,
        ),
        case(
            "xor x",
            &[(0x00, 0, 0, 6), (0x01, 0, 0, 3), (0xac, 0, 0, 0)],
            &a_is(5),
            true,
        ),
        case(
            "lsh x",
            &[(0x00, 0, 0, 1), (0x01, 0, 0, 4), (0x6c, 0, 0, 0)],
            &a_is(16),
            true,
        ),
        case(
            "rsh x",
            &[(0x00, 0, 0, 16), (0x01, 0, 0, 4), (0x7c, 0, 0, 0)],
            &a_is(1),
            true,
        ),
        case(
            "lsh x = 32 gives 0",
            &[(0x00, 0, 0, 1), (0x01, 0, 0, 32), (0x6c, 0, 0, 0)],
            &a_is(0),
            true,
        ),
        case(
            "rsh x = 40 gives 0",
            &[(0x00, 0, 0, 0xffff), (0x01, 0, 0, 40), (0x7c, 0, 0, 0)],
            &a_is(0),
            true,
        ),
        // BPF_JMP: unsigned 32-bit comparisons, both ways, K and X.
        case("jeq #k false", &[(0x00, 0, 0, 7)], &a_is(8), false),
        case(
            "jgt #k unsigned",
            &[(0x00, 0, 0, 0xffff_ffff), (0x25, 0, 1, 1), ACCEPT, REJECT],
            &[],
            true,
        ),
        case(
            "jgt #k equal",
            &[(0x00, 0, 0, 5), (0x25, 0, 1, 5), ACCEPT, REJECT],
            &[],
            false,
        ),
        case(
            "jge #k equal",
            &[(0x00, 0, 0, 5), (0x35, 0, 1, 5), ACCEPT, REJECT],
            &[],
            true,
        ),
        case(
            "jge #k below",
            &[(0x00, 0, 0, 4), (0x35, 0, 1, 5), ACCEPT, REJECT],
            &[],
            false,
        ),
        case(
            "jset #k",
            &[
                (0x00, 0, 0, 0x8000_0000),
                (0x45, 0, 1, 0x8000_0001),
                ACCEPT,
                REJECT,
            ],
            &[],
            true,
        ),
        case(
            "jset #k none",
            &[(0x00, 0, 0, 0x10), (0x45, 0, 1, 0x0f), ACCEPT, REJECT],
            &[],
            false,
        ),
        case(
            "jset #k jt far",
            &[(0x00, 0, 0, 0x10), (0x45, 1, 0, 0x10), REJECT, ACCEPT],
            &[],
            true,
        ),
        case(
            "jeq x",
            &[
                (0x00, 0, 0, 9),
                (0x01, 0, 0, 9),
                (0x1d, 0, 1, 0),
                ACCEPT,
                REJECT,
            ],
            &[],
            true,
        ),
        case(
            "jgt x",
            &[
                (0x00, 0, 0, 9),
                (0x01, 0, 0, 0xffff_ffff),
                (0x2d, 0, 1, 0),
                ACCEPT,
                REJECT,
            ],
            &[],
            false,
        ),
        case(
            "jge x",
            &[
                (0x00, 0, 0, 9),
                (0x01, 0, 0, 9),
                (0x3d, 1, 0, 0),
                REJECT,
                ACCEPT,
            ],
            &[],
            true,
        ),
        case(
            "jset x",
            &[
                (0x00, 0, 0, 6),
                (0x01, 0, 0, 8),
                (0x4d, 0, 1, 0),
                ACCEPT,
                REJECT,
            ],
            &[],
            false,
        ),
        case("jt = jf", &[(0x15, 1, 1, 0), ACCEPT, REJECT], &[], false),
        case("ja forward", &[(0x05, 0, 0, 1), REJECT, ACCEPT], &[], true),
        // A loop, as libpcap's protochain makes: count M[0] down from 3.
        case(
            "ja backward",
            &[
                (0x00, 0, 0, 3),            // 0: A = 3
                (0x02, 0, 0, 0),            // 1: M[0] = A
                (0x60, 0, 0, 0),            // 2: A = M[0]
                (0x15, 3, 0, 0),            // 3: A == 0 ? 7 : 4
                (0x14, 0, 0, 1),            // 4: A -= 1
                (0x02, 0, 0, 0),            // 5: M[0] = A
                (0x05, 0, 0, -5i32 as u32), // 6: ja 2
                ACCEPT,
            ],
            &[],
            true,
        ),
        // A loop reading with X: finds the byte 5 at P[5] (XDP loads it by helper).
        case(
            "loop with an indexed load",
            &[
                (0x50, 0, 0, 0),            // 0: A = P[X]
                (0x15, 4, 0, 5),            // 1: A == 5 ? 6 : 2
                (0x87, 0, 0, 0),            // 2: A = X
                (0x04, 0, 0, 1),            // 3: A += 1
                (0x07, 0, 0, 0),            // 4: X = A
                (0x05, 0, 0, -6i32 as u32), // 5: ja 0
                ACCEPT,
            ],
            &[],
            true,
        ),
        // ... where X + k wraps past 2^32 (libpcap: out of bounds) on the second round.
        case(
            "loop whose X + k wraps",
            &[
                (0x01, 0, 0, 3),            // 0: X = 3
                (0x50, 0, 0, 0),            // 1: A = P[X] (3, then past the end)
                (0x01, 0, 0, 0xffff_fff0),  // 2: X = 2^32 - 16
                (0x50, 0, 0, 0x20),         // 3: A = P[X + 0x20]: wraps to 16
                (0x05, 0, 0, -4i32 as u32), // 4: ja 1
                ACCEPT,
            ],
            &[],
            false,
        ),
        // BPF_RET.
        case("ret a nonzero", &[(0x00, 0, 0, 262_144), RET_A], &[], true),
        case("ret a zero", &[(0x00, 0, 0, 0), RET_A], &[], false),
        case("ret #0", &[REJECT], &[], false),
        case("ret #k", &[(0x06, 0, 0, 262_144)], &[], true),
        // BPF_MISC.
        case(
            "tax",
            &[
                (0x00, 0, 0, 21),
                (0x07, 0, 0, 0),
                (0x00, 0, 0, 0),
                (0x87, 0, 0, 0),
            ],
            &a_is(21),
            true,
        ),
        case("A and X start at 0", &[(0x0c, 0, 0, 0)], &a_is(0), true),
    ]
}

/// Runs every case on `hook`'s translation and on libpcap's interpreter.
fn check_hook(hook: Hook) {
    common::require_root();
    let packet: Vec<u8> = (0..60).collect();
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let program = Program::new(&case.raw).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let libpcap = libpcap_run(&case.raw, &packet)
            .unwrap_or_else(|| panic!("{}: libpcap's bpf_validate refuses it", case.name))
            != 0;
        let mut kernel = KernelFilter::load_for(&program, hook)
            .unwrap_or_else(|e| panic!("{} ({hook}): {e}", case.name));
        let verdict = kernel
            .run(&packet)
            .unwrap_or_else(|e| panic!("{} ({hook}): {e}", case.name));
        let kernel = verdict == Verdict::Match;
        if (libpcap, kernel) != (case.want, case.want) {
            failures.push(format!(
                "{}: want {}, libpcap {libpcap}, kernel {kernel}\n{program}",
                case.name, case.want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{hook}: {} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// TC: direct packet access with bounds checks, and `__sk_buff` fields.
#[test]
fn every_opcode_agrees_with_libpcap_and_the_table_on_tc() {
    check_hook(Hook::TcIngress);
}

/// Socket filters: loads from a stack copy of the packet's first bytes, run as TC.
#[test]
fn every_opcode_agrees_with_libpcap_and_the_table_on_socket() {
    check_hook(Hook::Socket);
}

/// Direct packet access with bounds checks.
#[test]
fn every_opcode_agrees_with_libpcap_and_the_table_on_xdp() {
    check_hook(Hook::Xdp);
}
