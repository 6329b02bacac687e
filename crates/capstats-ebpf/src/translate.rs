//! Classic BPF → eBPF counting program.
//!
//! One explicit case per classic instruction, in the manner of the kernel's
//! `bpf_convert_filter()`, with fixed register roles:
//!
//! | role | register | why |
//! |------|----------|-----|
//! | A    | `r0`     | `LD_ABS`/`LD_IND` write their result there |
//! | X    | `r7`     | callee-saved: survives packet loads and helper calls |
//! | TMP  | `r8`     | scratch for `ldx msh` and bounds guards |
//! | CTX  | `r6`     | `LD_ABS`/`LD_IND` require the `__sk_buff` there |
//! | FP   | `r10`    | `M[k]` lives at `r10 - 4 * (16 - k)` |
//!
//! Every accepting return jumps to the counting epilogue, which adds one packet and its
//! length on the wire (`skb->len`, plus 4 for a VLAN tag the kernel took out of the
//! frame, as tcpdump shows it) to one slot of a per-CPU array map; every rejecting return jumps past
//! it. Both end in the hook's neutral return value, so the program never changes what
//! happens to the packet.
//!
//! Where the kernel's eBPF and libpcap's interpreter would disagree on a classic
//! program, the generated code follows libpcap (`bpf_filter.c`): an indexed load whose
//! offset overflows or exceeds 2^31 rejects, division or modulo by X = 0 rejects, a
//! shift by X ≥ 32 gives 0.

use crate::asm::{AsmError, Assembler};
use crate::cbpf::{
    AluOp as ClassicAlu, Ancillary, ClassicInsn, Cond, LoadA, LoadSize, LoadX, Program, Src,
};
use crate::insn::build::*;
use crate::insn::{AluOp, Endian, Helper, Insn, JmpOp, Label, Operand, Reg, Size, Target};

const A: Reg = Reg::R0;
const X: Reg = Reg::R7;
const TMP: Reg = Reg::R8;
const CTX: Reg = Reg::R6;
const FP: Reg = Reg::R10;

/// Stack offset of the map key the epilogue looks up, below the scratch words.
const KEY_OFFSET: i16 = -68;

/// Field offsets in `struct __sk_buff` (include/uapi/linux/bpf.h).
mod skb {
    pub const LEN: i16 = 0;
    pub const PKT_TYPE: i16 = 4;
    pub const MARK: i16 = 8;
    pub const QUEUE_MAPPING: i16 = 12;
    pub const PROTOCOL: i16 = 16;
    pub const VLAN_PRESENT: i16 = 20;
    pub const VLAN_TCI: i16 = 24;
    pub const VLAN_PROTO: i16 = 28;
    pub const IFINDEX: i16 = 40;
    pub const HASH: i16 = 68;
}

/// The program type a translation is for; it decides the neutral return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `BPF_PROG_TYPE_SOCKET_FILTER` on an AF_PACKET socket: returns 0, so nothing is
    /// queued to user space.
    SocketFilter,
    /// `BPF_PROG_TYPE_SCHED_CLS` (TC clsact, and `capstats test` runs): returns
    /// `TC_ACT_UNSPEC`, so the packet continues down the chain untouched.
    Tc,
}

impl Hook {
    /// What the program returns whether or not it counted.
    pub const fn neutral_return(self) -> i32 {
        match self {
            Hook::SocketFilter => 0,
            Hook::Tc => -1,
        }
    }
}

/// Where matches are counted: slot `slot` of the per-CPU array map `map_fd`, whose
/// values are [`crate::counters::Counter`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSlot {
    pub map_fd: i32,
    pub slot: u32,
}

/// Translates a validated classic program into an eBPF program for `hook` that counts
/// its matches into `counter`.
pub fn translate(
    program: &Program,
    hook: Hook,
    counter: CounterSlot,
) -> Result<Vec<Insn>, AsmError> {
    assemble(program, hook, counter).finish()
}

/// The same translation as assembly text with its labels (see [`Assembler::listing`]).
pub fn translate_listing(
    program: &Program,
    hook: Hook,
    counter: CounterSlot,
) -> Result<String, AsmError> {
    assemble(program, hook, counter).listing()
}

fn assemble(program: &Program, hook: Hook, counter: CounterSlot) -> Assembler {
    let mut t = Translator {
        asm: Assembler::new(),
        next_local: 0,
    };
    t.prologue();
    t.filter(program);
    t.epilogue(hook, counter);
    t.asm
}

struct Translator {
    asm: Assembler,
    next_local: usize,
}

fn mem(m: u8) -> i16 {
    -4 * (16 - i16::from(m))
}

fn size(size: LoadSize) -> Size {
    match size {
        LoadSize::Byte => Size::B,
        LoadSize::Half => Size::H,
        LoadSize::Word => Size::W,
    }
}

fn imm(k: u32) -> Operand {
    Operand::Imm(k as i32)
}

impl Translator {
    fn emit(&mut self, insn: Insn) {
        self.asm.push(insn);
    }

    fn local(&mut self) -> Label {
        self.next_local += 1;
        Label::Local(self.next_local - 1)
    }

    fn prologue(&mut self) {
        self.emit(mov64(CTX, Operand::Reg(Reg::R1))); // CTX = skb
        self.emit(mov32(A, Operand::Imm(0))); // A = 0
        self.emit(mov32(X, Operand::Imm(0))); // X = 0
    }

    fn filter(&mut self, program: &Program) {
        let x_bounds = x_upper_bounds(program);
        for (pc, insn) in program.insns().iter().enumerate() {
            self.asm.label(Label::Classic(pc));
            self.insn(pc, *insn, x_bounds[pc]);
        }
    }

    /// One classic instruction. `x_bound` is the largest value X can hold here.
    fn insn(&mut self, pc: usize, insn: ClassicInsn, x_bound: u32) {
        let to = |skip: i64| Label::Classic((pc as i64 + 1 + skip) as usize);
        match insn {
            ClassicInsn::LoadA(LoadA::Abs { size: s, offset }) => {
                if offset > i32::MAX as u32 {
                    // Beyond any packet: libpcap's bounds check rejects.
                    self.emit(goto(Label::Reject));
                } else {
                    self.emit(Insn::LoadAbs {
                        size: size(s),
                        offset: offset as i32,
                    }); // A = P[k]
                }
            }
            ClassicInsn::LoadA(LoadA::Ind { size: s, offset }) => {
                self.load_ind(size(s), offset, x_bound)
            }
            ClassicInsn::LoadA(LoadA::Len) => self.emit(load(Size::W, A, CTX, skb::LEN)), // A = skb->len
            ClassicInsn::LoadA(LoadA::Imm(k)) => self.emit(mov32(A, imm(k))),             // A = k
            ClassicInsn::LoadA(LoadA::Mem(m)) => self.emit(load(Size::W, A, FP, mem(m))), // A = M[k]
            ClassicInsn::LoadA(LoadA::Ancillary { field, .. }) => self.ancillary(field),
            ClassicInsn::LoadX(LoadX::Imm(k)) => self.emit(mov32(X, imm(k))), // X = k
            ClassicInsn::LoadX(LoadX::Len) => self.emit(load(Size::W, X, CTX, skb::LEN)), // X = skb->len
            ClassicInsn::LoadX(LoadX::Mem(m)) => self.emit(load(Size::W, X, FP, mem(m))), // X = M[k]
            ClassicInsn::LoadX(LoadX::Msh(k)) => {
                if k > i32::MAX as u32 {
                    self.emit(goto(Label::Reject));
                } else {
                    self.emit(mov64(TMP, Operand::Reg(A))); // TMP = A
                    self.emit(Insn::LoadAbs {
                        size: Size::B,
                        offset: k as i32,
                    }); // A = P[k:1]
                    self.emit(alu32(AluOp::And, A, Operand::Imm(0xf))); // A &= 0xf
                    self.emit(alu32(AluOp::Lsh, A, Operand::Imm(2))); // A <<= 2
                    self.emit(mov64(X, Operand::Reg(A))); // X = 4 * (P[k:1] & 0xf)
                    self.emit(mov64(A, Operand::Reg(TMP))); // A = TMP
                }
            }
            ClassicInsn::StoreA(m) => self.emit(store(Size::W, FP, mem(m), Operand::Reg(A))), // M[k] = A
            ClassicInsn::StoreX(m) => self.emit(store(Size::W, FP, mem(m), Operand::Reg(X))), // M[k] = X
            ClassicInsn::Alu(op, src) => self.alu(op, src),
            ClassicInsn::Neg => self.emit(Insn::Neg {
                width: crate::insn::Width::W32,
                dst: A,
            }), // A = -A
            ClassicInsn::Ja(k) if k < 0 => {
                // A loop. libpcap's interpreter would spin for as long as the packet
                // makes it; the kernel gives up after its loop budget (millions of
                // rounds, far beyond any packet's extension headers), with no match.
                self.emit(Insn::MayGoto {
                    target: Target::Label(Label::Reject),
                });
                self.emit(goto(to(k.into())));
            }
            ClassicInsn::Ja(k) => self.emit(goto(to(k.into()))),
            ClassicInsn::Jump { cond, src, jt, jf } => {
                self.jump(cond, src, to(jt.into()), to(jf.into()), jt, jf)
            }
            ClassicInsn::RetK(0) => self.emit(goto(Label::Reject)),
            ClassicInsn::RetK(_) => self.emit(goto(Label::Accept)),
            ClassicInsn::RetA => {
                self.emit(branch32(JmpOp::Ne, A, Operand::Imm(0), Label::Accept)); // A != 0: match
                self.emit(goto(Label::Reject));
            }
            ClassicInsn::Tax => self.emit(mov32(X, Operand::Reg(A))), // X = A
            ClassicInsn::Txa => self.emit(mov32(A, Operand::Reg(X))), // A = X
        }
    }

    /// `A = P[X + k]`. libpcap rejects when `X + k` overflows 32 bits or lies past the
    /// packet; the kernel would wrap the sum and read negative offsets relative to the
    /// link or network header. The guard keeps libpcap's meaning, and is left out when
    /// X is known small enough that neither can happen.
    fn load_ind(&mut self, size: Size, offset: u32, x_bound: u32) {
        if offset > i32::MAX as u32 {
            self.emit(goto(Label::Reject));
        } else if u64::from(x_bound) + u64::from(offset) <= i32::MAX as u64 {
            self.emit(Insn::LoadInd {
                size,
                src: X,
                offset: offset as i32,
            }); // A = P[X + k]
        } else {
            self.emit(mov64(TMP, Operand::Reg(X))); // TMP = X (zero-extended)
            self.emit(alu64(AluOp::Add, TMP, imm(offset))); // TMP = X + k, without wrapping
            self.emit(branch64(
                JmpOp::Gt,
                TMP,
                Operand::Imm(i32::MAX),
                Label::Reject,
            )); // past any packet
            self.emit(Insn::LoadInd {
                size,
                src: TMP,
                offset: 0,
            }); // A = P[TMP]
        }
    }

    fn ancillary(&mut self, field: Ancillary) {
        let field_u32 = |t: &mut Self, offset: i16| t.emit(load(Size::W, A, CTX, offset));
        match field {
            Ancillary::Protocol => {
                field_u32(self, skb::PROTOCOL); // A = skb->protocol (network order)
                self.emit(Insn::Endian {
                    to: Endian::Be,
                    bits: 16,
                    dst: A,
                }); // A = ntohs(A)
            }
            Ancillary::PktType => field_u32(self, skb::PKT_TYPE), // A = skb->pkt_type
            Ancillary::Ifindex => field_u32(self, skb::IFINDEX),  // A = skb->dev->ifindex
            Ancillary::Mark => field_u32(self, skb::MARK),        // A = skb->mark
            Ancillary::Queue => field_u32(self, skb::QUEUE_MAPPING), // A = skb->queue_mapping
            Ancillary::RxHash => field_u32(self, skb::HASH),      // A = skb->hash
            Ancillary::VlanTag => field_u32(self, skb::VLAN_TCI), // A = skb->vlan_tci
            Ancillary::VlanTagPresent => field_u32(self, skb::VLAN_PRESENT), // A = tag present
            Ancillary::VlanTpid => {
                field_u32(self, skb::VLAN_PROTO); // A = skb->vlan_proto (network order)
                self.emit(Insn::Endian {
                    to: Endian::Be,
                    bits: 16,
                    dst: A,
                }); // A = ntohs(A)
            }
            Ancillary::Cpu => self.emit(Insn::Call(Helper::GetSmpProcessorId)), // A = cpu
            Ancillary::Random => self.emit(Insn::Call(Helper::GetPrandomU32)),  // A = random
            Ancillary::AluXorX => self.emit(alu32(AluOp::Xor, A, Operand::Reg(X))), // A ^= X
        }
    }

    fn alu(&mut self, op: ClassicAlu, src: Src) {
        let operand = match src {
            Src::K(k) => imm(k),
            Src::X => Operand::Reg(X),
        };
        let ebpf_op = match op {
            ClassicAlu::Add => AluOp::Add,
            ClassicAlu::Sub => AluOp::Sub,
            ClassicAlu::Mul => AluOp::Mul,
            ClassicAlu::Div => AluOp::Div,
            ClassicAlu::Mod => AluOp::Mod,
            ClassicAlu::And => AluOp::And,
            ClassicAlu::Or => AluOp::Or,
            ClassicAlu::Xor => AluOp::Xor,
            ClassicAlu::Lsh => AluOp::Lsh,
            ClassicAlu::Rsh => AluOp::Rsh,
        };
        match (op, src) {
            (ClassicAlu::Div | ClassicAlu::Mod, Src::X) => {
                // Classic BPF ends with "no match" on X = 0; eBPF would go on with 0 or A.
                self.emit(branch32(JmpOp::Eq, X, Operand::Imm(0), Label::Reject));
                self.emit(alu32(ebpf_op, A, operand)); // A = A op X
            }
            (ClassicAlu::Lsh | ClassicAlu::Rsh, Src::X) => {
                // libpcap gives 0 for shifts of 32 or more; eBPF masks the count to 5 bits.
                let shift = self.local();
                let done = self.local();
                self.emit(branch32(JmpOp::Lt, X, Operand::Imm(32), shift));
                self.emit(mov32(A, Operand::Imm(0))); // A = 0
                self.emit(goto(done));
                self.asm.label(shift);
                self.emit(alu32(ebpf_op, A, operand)); // A = A op X
                self.asm.label(done);
            }
            _ => self.emit(alu32(ebpf_op, A, operand)), // A = A op src
        }
    }

    fn jump(&mut self, cond: Cond, src: Src, on_true: Label, on_false: Label, jt: u8, jf: u8) {
        let op = match cond {
            Cond::Eq => JmpOp::Eq,
            Cond::Gt => JmpOp::Gt,
            Cond::Ge => JmpOp::Ge,
            Cond::Set => JmpOp::Set,
        };
        let operand = match src {
            Src::K(k) => imm(k),
            Src::X => Operand::Reg(X),
        };
        if jt == jf {
            // Both ways lead to the same place: no comparison needed.
            if jt != 0 {
                self.emit(goto(on_true));
            }
            return;
        }
        match op.negate() {
            // True falls through: branch on the opposite to the false target.
            Some(negated) if jt == 0 => self.emit(branch32(negated, A, operand, on_false)),
            _ => {
                self.emit(branch32(op, A, operand, on_true));
                if jf != 0 {
                    self.emit(goto(on_false));
                }
            }
        }
    }

    /// `accept:` count one packet and its bytes into the slot; `reject:` return.
    fn epilogue(&mut self, hook: Hook, counter: CounterSlot) {
        let (r0, r1, r2, r3) = (Reg::R0, Reg::R1, Reg::R2, Reg::R3);
        self.asm.label(Label::Accept);
        self.emit(store(Size::W, FP, KEY_OFFSET, imm(counter.slot))); // key = slot
        self.emit(mov64(r2, Operand::Reg(FP))); // r2 = &key
        self.emit(alu64(AluOp::Add, r2, Operand::Imm(KEY_OFFSET.into())));
        self.emit(Insn::LoadMapFd {
            dst: r1,
            fd: counter.map_fd,
        }); // r1 = counters
        self.emit(Insn::Call(Helper::MapLookupElem)); // r0 = &counters[slot] on this CPU
        self.emit(branch64(JmpOp::Eq, r0, Operand::Imm(0), Label::Reject));
        // Per-CPU values, and a CPU runs one hook invocation at a time: plain adds.
        self.emit(load(Size::DW, r1, r0, 0)); // packets += 1
        self.emit(alu64(AluOp::Add, r1, Operand::Imm(1)));
        self.emit(store(Size::DW, r0, 0, Operand::Reg(r1)));
        // bytes += the frame's length on the wire: skb->len, plus the 4 bytes of a VLAN
        // tag the kernel moved out of the frame into metadata (tcpdump puts it back).
        self.emit(load(Size::W, r1, CTX, skb::LEN));
        self.emit(load(Size::W, r3, CTX, skb::VLAN_PRESENT));
        self.emit(alu64(AluOp::Lsh, r3, Operand::Imm(2)));
        self.emit(alu64(AluOp::Add, r1, Operand::Reg(r3)));
        self.emit(load(Size::DW, r2, r0, 8));
        self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
        self.emit(store(Size::DW, r0, 8, Operand::Reg(r2)));
        self.asm.label(Label::Reject);
        self.emit(mov64(r0, Operand::Imm(hook.neutral_return()))); // the hook's "carry on"
        self.emit(Insn::Exit);
    }
}

/// For each classic instruction, the largest value X can hold when it runs: one forward
/// sweep taking the maximum where paths join. In a program with a loop, X may grow each
/// round: nothing is assumed.
fn x_upper_bounds(program: &Program) -> Vec<u32> {
    let insns = program.insns();
    if program.has_loops() {
        return vec![u32::MAX; insns.len()];
    }
    let mut bound_in: Vec<Option<u32>> = vec![None; insns.len()];
    bound_in[0] = Some(0);
    for (pc, insn) in insns.iter().enumerate() {
        let Some(bound) = bound_in[pc] else { continue };
        let out = match *insn {
            ClassicInsn::LoadX(LoadX::Imm(k)) => k,
            ClassicInsn::LoadX(LoadX::Msh(_)) => 60,
            ClassicInsn::LoadX(LoadX::Len | LoadX::Mem(_)) | ClassicInsn::Tax => u32::MAX,
            _ => bound,
        };
        for next in insn.successors(pc) {
            bound_in[next] = Some(bound_in[next].map_or(out, |b| b.max(out)));
        }
    }
    // Unreachable instructions are translated too; assume nothing about them.
    bound_in
        .into_iter()
        .map(|b| b.unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbpf::{RawInsn, SKF_AD_OFF};

    const COUNTER: CounterSlot = CounterSlot { map_fd: 7, slot: 3 };

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
        let listing = translate_listing(&program, Hook::Tc, COUNTER).unwrap();
        listing
            .lines()
            .skip(3) // r6 = r1; w0 = 0; w7 = 0
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
            Hook::SocketFilter,
        );
        assert_eq!(
            lines,
            [
                "r6 = r1",
                "w0 = 0",
                "w7 = 0",
                "r0 = *(u16 *)skb[12]",
                "if w0 != 0x800 goto +1",
                "goto +1",
                "goto +17",
                "*(u32 *)(r10 - 68) = 3",
                "r2 = r10",
                "r2 += -68",
                "r1 = map[fd:7]",
                "call bpf_map_lookup_elem#1",
                "if r0 == 0 goto +10",
                "r1 = *(u64 *)(r0 + 0)",
                "r1 += 1",
                "*(u64 *)(r0 + 0) = r1",
                "r1 = *(u32 *)(r6 + 0)",
                "r3 = *(u32 *)(r6 + 20)",
                "r3 <<= 2",
                "r1 += r3",
                "r2 = *(u64 *)(r0 + 8)",
                "r2 += r1",
                "*(u64 *)(r0 + 8) = r2",
                "r0 = 0",
                "exit",
            ]
        );
        // TC continues the chain instead: TC_ACT_UNSPEC.
        let tc = listing(&[(0x06, 0, 0, 1)], Hook::Tc);
        assert_eq!(tc[tc.len() - 2..], ["r0 = -1", "exit"]);
    }

    #[test]
    fn each_classic_instruction_becomes_these_ebpf_instructions() {
        let ad = |n: u32| SKF_AD_OFF + n;
        let table: &[(&str, &[Raw], &[&str])] = &[
            ("ld [k]", &[(0x20, 0, 0, 26)], &["r0 = *(u32 *)skb[26]"]),
            ("ldh [k]", &[(0x28, 0, 0, 12)], &["r0 = *(u16 *)skb[12]"]),
            ("ldb [k]", &[(0x30, 0, 0, 23)], &["r0 = *(u8 *)skb[23]"]),
            // Beyond any packet: straight to the return; what follows is dropped unreachable.
            (
                "ldb [k >= 2^31]",
                &[(0x30, 0, 0, 0x8000_0000)],
                &["goto reject"],
            ),
            // X bounded by ldx msh (<= 60): no guard.
            (
                "ldh [x + k], x small",
                &[(0xb1, 0, 0, 14), (0x48, 0, 0, 16)],
                &[
                    "r8 = r0",
                    "r0 = *(u8 *)skb[14]",
                    "w0 &= 0xf",
                    "w0 <<= 2",
                    "r7 = r0",
                    "r0 = r8",
                    "r0 = *(u16 *)skb[r7 + 16]",
                ],
            ),
            // X unknown: X + k must not pass 2^31 (libpcap's bounds), checked in 64 bits.
            (
                "ldb [x + k], x unknown",
                &[(0x81, 0, 0, 0), (0x50, 0, 0, 14)],
                &[
                    "r7 = *(u32 *)(r6 + 0)",
                    "r8 = r7",
                    "r8 += 14",
                    "if r8 > 0x7fffffff goto reject",
                    "r0 = *(u8 *)skb[r8 + 0]",
                ],
            ),
            ("ld #pktlen", &[(0x80, 0, 0, 0)], &["r0 = *(u32 *)(r6 + 0)"]),
            ("ld #k", &[(0x00, 0, 0, 0xffff_ffff)], &["w0 = 0xffffffff"]),
            (
                "st/ld M[k]",
                &[(0x02, 0, 0, 0), (0x60, 0, 0, 0)],
                &["*(u32 *)(r10 - 64) = r0", "r0 = *(u32 *)(r10 - 64)"],
            ),
            (
                "stx/ldx M[k]",
                &[(0x03, 0, 0, 15), (0x61, 0, 0, 15)],
                &["*(u32 *)(r10 - 4) = r7", "r7 = *(u32 *)(r10 - 4)"],
            ),
            ("ldx #k", &[(0x01, 0, 0, 4)], &["w7 = 4"]),
            ("add #k", &[(0x04, 0, 0, 1)], &["w0 += 1"]),
            (
                "rsh x",
                &[(0x7c, 0, 0, 0)],
                &[
                    "if w7 < 0x20 goto l0",
                    "w0 = 0",
                    "goto l1",
                    "l0:",
                    "w0 >>= w7",
                    "l1:",
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
            Hook::Tc,
        );
        assert_eq!(
            lines[3..9],
            [
                "w0 = 3",
                "if w0 == 0 goto +3",
                "w0 -= 1",
                "may_goto +19",
                "goto -4",
                "goto +0"
            ]
        );
    }
}
