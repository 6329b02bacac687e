//! Classic BPF programs, validated with the kernel's rules into a typed form.
//!
//! [`Program::new`] applies what `bpf_check_classic()` in `net/core/filter.c` checks
//! (an opcode whitelist, no constant division by zero or shift by 32 and more, scratch
//! slots in range and written before read, jumps inside the program, a final return)
//! and decodes every instruction into [`ClassicInsn`]. After that, translation cannot
//! meet an instruction it does not know.

use std::fmt;

/// `BPF_MAXINSNS`: the kernel's limit on classic programs.
pub const MAX_INSNS: usize = 4096;
/// `BPF_MEMWORDS`: scratch memory slots `M[0..16]`.
pub const MEM_WORDS: u32 = 16;
/// `SKF_AD_OFF`: loads at `SKF_AD_OFF + n` read socket-buffer metadata, not packet bytes.
pub const SKF_AD_OFF: u32 = -0x1000i32 as u32;
/// `SKF_LL_OFF`: the lowest negative offset the kernel gives a meaning to.
pub const SKF_LL_OFF: u32 = -0x200000i32 as u32;

/// One classic instruction as libpcap and the kernel store it (`struct sock_filter`,
/// `struct bpf_insn` in libpcap: the layout must match).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl RawInsn {
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Self {
        Self { code, jt, jf, k }
    }
}

/// Size of a packet load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadSize {
    Byte,
    Half,
    Word,
}

impl LoadSize {
    const fn mnemonic(self) -> &'static str {
        match self {
            LoadSize::Byte => "ldb",
            LoadSize::Half => "ldh",
            LoadSize::Word => "ld",
        }
    }
}

/// Socket-buffer metadata read by an ancillary load (`SKF_AD_*`). Whatever the load's
/// size, the whole field is read, as the kernel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ancillary {
    /// `SKF_AD_PROTOCOL`: the link-layer protocol, `ntohs(skb->protocol)`.
    Protocol,
    /// `SKF_AD_PKTTYPE`: `skb->pkt_type` (`PACKET_HOST`, `PACKET_OUTGOING`, ...).
    PktType,
    /// `SKF_AD_IFINDEX`: the interface index of the packet's device.
    Ifindex,
    /// `SKF_AD_MARK`: `skb->mark`.
    Mark,
    /// `SKF_AD_QUEUE`: `skb->queue_mapping`.
    Queue,
    /// `SKF_AD_RXHASH`: `skb->hash`.
    RxHash,
    /// `SKF_AD_CPU`: the CPU running the filter.
    Cpu,
    /// `SKF_AD_ALU_XOR_X`: not a load at all, `A ^= X`.
    AluXorX,
    /// `SKF_AD_VLAN_TAG`: the TCI of the tag the kernel took out of the packet.
    VlanTag,
    /// `SKF_AD_VLAN_TAG_PRESENT`: 1 when such a tag was taken out.
    VlanTagPresent,
    /// `SKF_AD_RANDOM`: a pseudo-random number.
    Random,
    /// `SKF_AD_VLAN_TPID`: the TPID of that tag, host order.
    VlanTpid,
}

impl Ancillary {
    /// Decodes `SKF_AD_OFF + offset`. `Err` carries the names the kernel knows but that
    /// have no `__sk_buff` equivalent for an eBPF program.
    fn from_offset(offset: u32) -> Result<Self, Option<&'static str>> {
        Ok(match offset {
            0 => Ancillary::Protocol,
            4 => Ancillary::PktType,
            8 => Ancillary::Ifindex,
            12 => return Err(Some("SKF_AD_NLATTR")),
            16 => return Err(Some("SKF_AD_NLATTR_NEST")),
            20 => Ancillary::Mark,
            24 => Ancillary::Queue,
            28 => return Err(Some("SKF_AD_HATYPE")),
            32 => Ancillary::RxHash,
            36 => Ancillary::Cpu,
            40 => Ancillary::AluXorX,
            44 => Ancillary::VlanTag,
            48 => Ancillary::VlanTagPresent,
            52 => return Err(Some("SKF_AD_PAY_OFFSET")),
            56 => Ancillary::Random,
            60 => Ancillary::VlanTpid,
            _ => return Err(None),
        })
    }

    /// The name tcpdump's `-d` listing uses, where it has one.
    const fn name(self) -> &'static str {
        match self {
            Ancillary::Protocol => "proto",
            Ancillary::PktType => "type",
            Ancillary::Ifindex => "ifidx",
            Ancillary::Mark => "mark",
            Ancillary::Queue => "queue",
            Ancillary::RxHash => "rxhash",
            Ancillary::Cpu => "cpu",
            Ancillary::AluXorX => "xor_x",
            Ancillary::VlanTag => "vlan_tci",
            Ancillary::VlanTagPresent => "vlanp",
            Ancillary::Random => "random",
            Ancillary::VlanTpid => "vlan_tpid",
        }
    }
}

/// What a load puts into the accumulator A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadA {
    /// `A = P[k:size]`, big endian.
    Abs { size: LoadSize, offset: u32 },
    /// `A = P[X + k:size]`, big endian.
    Ind { size: LoadSize, offset: u32 },
    /// `A = len`: the packet's length.
    Len,
    /// `A = k`.
    Imm(u32),
    /// `A = M[k]`.
    Mem(u8),
    /// `A = skb metadata` (or `A ^= X` for [`Ancillary::AluXorX`]).
    Ancillary { size: LoadSize, field: Ancillary },
}

/// What a load puts into the index register X.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadX {
    /// `X = k`.
    Imm(u32),
    /// `X = len`.
    Len,
    /// `X = M[k]`.
    Mem(u8),
    /// `X = 4 * (P[k:1] & 0xf)`: the IPv4 header length.
    Msh(u32),
}

/// The second operand of an ALU operation or comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Src {
    K(u32),
    X,
}

impl fmt::Display for Src {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Src::K(k) => write!(f, "#{k:#x}"),
            Src::X => f.write_str("x"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Lsh,
    Rsh,
}

impl AluOp {
    const fn mnemonic(self) -> &'static str {
        match self {
            AluOp::Add => "add",
            AluOp::Sub => "sub",
            AluOp::Mul => "mul",
            AluOp::Div => "div",
            AluOp::Mod => "mod",
            AluOp::And => "and",
            AluOp::Or => "or",
            AluOp::Xor => "xor",
            AluOp::Lsh => "lsh",
            AluOp::Rsh => "rsh",
        }
    }
}

/// The comparison of a conditional jump (all unsigned 32-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond {
    Eq,
    Gt,
    Ge,
    Set,
}

impl Cond {
    const fn mnemonic(self) -> &'static str {
        match self {
            Cond::Eq => "jeq",
            Cond::Gt => "jgt",
            Cond::Ge => "jge",
            Cond::Set => "jset",
        }
    }
}

/// A validated classic instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassicInsn {
    LoadA(LoadA),
    LoadX(LoadX),
    /// `M[k] = A`.
    StoreA(u8),
    /// `M[k] = X`.
    StoreX(u8),
    /// `A = A op src`.
    Alu(AluOp, Src),
    /// `A = -A`.
    Neg,
    /// `pc += 1 + k`, `k` signed: libpcap's `protochain` loops with a backward `ja`,
    /// which its interpreter sign-extends (the kernel's classic checker refuses it).
    Ja(i32),
    /// `pc += 1 + (A cond src ? jt : jf)`.
    Jump {
        cond: Cond,
        src: Src,
        jt: u8,
        jf: u8,
    },
    /// Return `k`: 0 rejects the packet, anything else accepts it.
    RetK(u32),
    /// Return A.
    RetA,
    /// `X = A`.
    Tax,
    /// `A = X`.
    Txa,
}

impl ClassicInsn {
    /// Instructions control may pass to after this one at `pc`, in order.
    pub fn successors(&self, pc: usize) -> Vec<usize> {
        match *self {
            ClassicInsn::Ja(k) => vec![(pc as i64 + 1 + i64::from(k)) as usize],
            ClassicInsn::Jump { jt, jf, .. } => {
                vec![pc + 1 + usize::from(jt), pc + 1 + usize::from(jf)]
            }
            ClassicInsn::RetK(_) | ClassicInsn::RetA => vec![],
            _ => vec![pc + 1],
        }
    }

    /// The listing line of tcpdump's `-d`, jump targets absolute from `pc`.
    pub fn display_at(&self, pc: usize) -> String {
        let op = |mnemonic: &str, arg: String| format!("{mnemonic:<8} {arg}");
        match *self {
            ClassicInsn::LoadA(load) => match load {
                LoadA::Abs { size, offset } => op(size.mnemonic(), format!("[{offset}]")),
                LoadA::Ind { size, offset } => op(size.mnemonic(), format!("[x + {offset}]")),
                LoadA::Len => op("ld", "#pktlen".into()),
                LoadA::Imm(k) => op("ld", format!("#{k:#x}")),
                LoadA::Mem(m) => op("ld", format!("M[{m}]")),
                LoadA::Ancillary { size, field } => {
                    op(size.mnemonic(), format!("[{}]", field.name()))
                }
            },
            ClassicInsn::LoadX(load) => match load {
                LoadX::Imm(k) => op("ldx", format!("#{k:#x}")),
                LoadX::Len => op("ldx", "#pktlen".into()),
                LoadX::Mem(m) => op("ldx", format!("M[{m}]")),
                LoadX::Msh(k) => op("ldxb", format!("4*([{k}]&0xf)")),
            },
            ClassicInsn::StoreA(m) => op("st", format!("M[{m}]")),
            ClassicInsn::StoreX(m) => op("stx", format!("M[{m}]")),
            ClassicInsn::Alu(alu, src) => op(alu.mnemonic(), src.to_string()),
            ClassicInsn::Neg => "neg".into(),
            ClassicInsn::Ja(k) => op("ja", format!("{}", pc as i64 + 1 + i64::from(k))),
            ClassicInsn::Jump { cond, src, jt, jf } => format!(
                "{:<25} jt {}\tjf {}",
                op(cond.mnemonic(), src.to_string()),
                pc + 1 + usize::from(jt),
                pc + 1 + usize::from(jf)
            ),
            ClassicInsn::RetK(k) => op("ret", format!("#{k}")),
            ClassicInsn::RetA => op("ret", "a".into()),
            ClassicInsn::Tax => "tax".into(),
            ClassicInsn::Txa => "txa".into(),
        }
    }
}

/// The Linux cooked headers libpcap compiles for on `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooked {
    /// `LINKTYPE_LINUX_SLL`: 16 bytes, packet type at 0, protocol at 14.
    Sll,
    /// `LINKTYPE_LINUX_SLL2`: 20 bytes, protocol at 0, interface index at 4, packet
    /// type at 10.
    Sll2,
}

impl Cooked {
    /// The header's length.
    pub const fn header_len(self) -> u32 {
        match self {
            Cooked::Sll => 16,
            Cooked::Sll2 => 20,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Cooked::Sll => "LINUX_SLL",
            Cooked::Sll2 => "LINUX_SLL2",
        }
    }
}

/// A program that reads a part of the cooked header the kernel does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "instruction {pc} reads byte {offset} of the {} cooked header (a link-layer address or \
     type), which no packet socket filter sees: libpcap runs such a filter in user space",
    header.name()
)]
pub struct CookedError {
    pub pc: usize,
    pub offset: u32,
    pub header: Cooked,
}

/// Why a classic program was refused. Every variant names the instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassicError {
    #[error("the program is empty")]
    Empty,
    #[error("the program has {len} instructions; the kernel's limit is {MAX_INSNS}")]
    TooLong { len: usize },
    #[error("instruction {pc}: unknown classic opcode {code:#06x}")]
    UnknownOpcode { pc: usize, code: u16 },
    #[error("instruction {pc}: division or modulo by the constant 0")]
    DivisionByZero { pc: usize },
    #[error("instruction {pc}: shift by {k} bits (at most 31)")]
    ShiftTooFar { pc: usize, k: u32 },
    #[error("instruction {pc}: scratch slot M[{k}] does not exist (M[0] to M[15])")]
    ScratchOutOfRange { pc: usize, k: u32 },
    #[error("instruction {pc}: jump to {target}, outside the {len}-instruction program")]
    JumpOutOfRange { pc: usize, target: i64, len: usize },
    #[error("instruction {pc}: the last instruction must be a return")]
    NoFinalReturn { pc: usize },
    #[error("instruction {pc}: reads scratch slot M[{k}] before any path writes it")]
    ScratchReadBeforeWrite { pc: usize, k: u8 },
    #[error("instruction {pc}: ancillary load {name} has no eBPF equivalent")]
    UnsupportedAncillary { pc: usize, name: &'static str },
    #[error("instruction {pc}: unknown ancillary offset SKF_AD_OFF + {offset}")]
    UnknownAncillary { pc: usize, offset: u32 },
    #[error(
        "instruction {pc}: load at negative offset {offset} (SKF_LL_OFF/SKF_NET_OFF) is not supported"
    )]
    NegativeOffset { pc: usize, offset: i32 },
}

/// `skb->pkt_type` of a packet leaving the host.
const PACKET_OUTGOING: u32 = 4;

/// `A = skb->pkt_type`.
const LOAD_PKT_TYPE: ClassicInsn = ClassicInsn::LoadA(LoadA::Ancillary {
    size: LoadSize::Half,
    field: Ancillary::PktType,
});

/// A classic program that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Program {
    insns: Vec<ClassicInsn>,
}

impl Program {
    /// Validates `raw` with the kernel's classic rules.
    pub fn new(raw: &[RawInsn]) -> Result<Self, ClassicError> {
        if raw.is_empty() {
            return Err(ClassicError::Empty);
        }
        if raw.len() > MAX_INSNS {
            return Err(ClassicError::TooLong { len: raw.len() });
        }
        let insns = raw
            .iter()
            .enumerate()
            .map(|(pc, insn)| decode(pc, insn, raw.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let last = insns.len() - 1;
        if !matches!(insns[last], ClassicInsn::RetK(_) | ClassicInsn::RetA) {
            return Err(ClassicError::NoFinalReturn { pc: last });
        }
        check_scratch_written_before_read(&insns)?;
        Ok(Self { insns })
    }

    pub fn insns(&self) -> &[ClassicInsn] {
        &self.insns
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The same program behind a guard that rejects outgoing packets
    /// (`PACKET_OUTGOING`). On a loopback interface a packet socket sees every packet
    /// twice, leaving and arriving; libpcap drops the leaving copy in user space, so
    /// `tcpdump -i lo` shows each once, and a session on loopback must too.
    pub fn rejecting_outgoing(&self) -> Program {
        self.behind(&[
            // A = skb->pkt_type
            LOAD_PKT_TYPE,
            ClassicInsn::Jump {
                cond: Cond::Eq,
                src: Src::K(PACKET_OUTGOING),
                jt: 0,
                jf: 1,
            },
            ClassicInsn::RetK(0),
        ])
    }

    /// The same program behind a guard that rejects the leaving copy of packets on
    /// interface `ifindex` (`PACKET_OUTGOING` there): libpcap does so for the loopback
    /// interface on `any`, where each of its packets passes twice.
    pub fn rejecting_outgoing_on(&self, ifindex: u32) -> Program {
        self.behind(&[
            // A = skb->pkt_type
            LOAD_PKT_TYPE,
            ClassicInsn::Jump {
                cond: Cond::Eq,
                src: Src::K(PACKET_OUTGOING),
                jt: 0,
                jf: 3,
            },
            // A = skb->dev->ifindex
            ClassicInsn::LoadA(LoadA::Ancillary {
                size: LoadSize::Word,
                field: Ancillary::Ifindex,
            }),
            ClassicInsn::Jump {
                cond: Cond::Eq,
                src: Src::K(ifindex),
                jt: 0,
                jf: 1,
            },
            ClassicInsn::RetK(0),
        ])
    }

    /// The program behind `guard`, which falls through (to `A = 0`, as a classic
    /// program starts) for the packets it lets on. Classic jumps are relative: the
    /// program's own stay right behind the guard.
    fn behind(&self, guard: &[ClassicInsn]) -> Program {
        Program {
            insns: guard
                .iter()
                .copied()
                .chain([ClassicInsn::LoadA(LoadA::Imm(0))]) // A = 0 again
                .chain(self.insns.iter().copied())
                .collect(),
        }
    }

    /// The program as libpcap hands it to the kernel for a cooked socket
    /// (`fix_program` in pcap-linux.c): libpcap compiles for a Linux cooked header
    /// before the packet (`header`), but an unbound `SOCK_DGRAM` packet socket's filter
    /// sees the packet from its network header. Loads past the header move back by its
    /// length; loads of its protocol, interface index and packet type fields become
    /// ancillary loads; an indexed load or `msh` of them reads nothing the kernel has
    /// (rejects, as in the kernel). A load of another part of the header (a link-layer
    /// address: `ether host` on `any`) is one libpcap runs in user space only: refused,
    /// with the instruction.
    pub fn for_cooked_socket(&self, header: Cooked) -> Result<Program, CookedError> {
        let field = |k: u32| -> Option<Ancillary> {
            match (header, k) {
                (Cooked::Sll2, 0) | (Cooked::Sll, 14) => Some(Ancillary::Protocol),
                (Cooked::Sll2, 4) => Some(Ancillary::Ifindex),
                (Cooked::Sll2, 10) | (Cooked::Sll, 0) => Some(Ancillary::PktType),
                _ => None,
            }
        };
        let len = header.header_len();
        // Beyond any packet: the translation rejects such an offset.
        const UNREADABLE: u32 = u32::MAX;
        let mut insns = Vec::with_capacity(self.insns.len());
        for (pc, insn) in self.insns.iter().enumerate() {
            let moved = |offset: u32| -> Result<u32, CookedError> {
                if offset >= len {
                    Ok(offset - len)
                } else if field(offset).is_some() {
                    Ok(UNREADABLE)
                } else {
                    Err(CookedError { pc, offset, header })
                }
            };
            insns.push(match *insn {
                ClassicInsn::LoadA(LoadA::Abs { size, offset }) if offset < len => {
                    match field(offset) {
                        Some(field) => ClassicInsn::LoadA(LoadA::Ancillary { size, field }),
                        None => return Err(CookedError { pc, offset, header }),
                    }
                }
                ClassicInsn::LoadA(LoadA::Abs { size, offset }) => ClassicInsn::LoadA(LoadA::Abs {
                    size,
                    offset: offset - len,
                }),
                ClassicInsn::LoadA(LoadA::Ind { size, offset }) => ClassicInsn::LoadA(LoadA::Ind {
                    size,
                    offset: moved(offset)?,
                }),
                ClassicInsn::LoadX(LoadX::Msh(offset)) => {
                    ClassicInsn::LoadX(LoadX::Msh(moved(offset)?))
                }
                other => other,
            });
        }
        Ok(Program { insns })
    }

    /// Whether some `ja` jumps backwards (a loop: libpcap's `protochain`).
    pub fn has_loops(&self) -> bool {
        self.insns
            .iter()
            .any(|insn| matches!(insn, ClassicInsn::Ja(k) if *k < 0))
    }

    /// Whether the program reads socket-buffer metadata (live-handle semantics).
    pub fn uses_ancillary(&self) -> bool {
        self.insns
            .iter()
            .any(|insn| matches!(insn, ClassicInsn::LoadA(LoadA::Ancillary { .. })))
    }
}

impl fmt::Display for Program {
    /// The listing of `tcpdump -d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (pc, insn) in self.insns.iter().enumerate() {
            writeln!(f, "({pc:03}) {}", insn.display_at(pc))?;
        }
        Ok(())
    }
}

// Opcode fields (include/uapi/linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const MSH: u16 = 0xa0;
const NEG: u16 = 0x80;
const K: u16 = 0x00;
const X: u16 = 0x08;
const A: u16 = 0x10;

fn decode(pc: usize, raw: &RawInsn, len: usize) -> Result<ClassicInsn, ClassicError> {
    let k = raw.k;
    let scratch = |k: u32| {
        u8::try_from(k)
            .ok()
            .filter(|&m| u32::from(m) < MEM_WORDS)
            .ok_or(ClassicError::ScratchOutOfRange { pc, k })
    };
    let jump_to = |skip: i64| {
        let target = pc as i64 + 1 + skip;
        if (0..len as i64).contains(&target) {
            Ok(())
        } else {
            Err(ClassicError::JumpOutOfRange { pc, target, len })
        }
    };
    let src = |code: u16| if code & X != 0 { Src::X } else { Src::K(k) };
    let alu = |op: AluOp| -> Result<ClassicInsn, ClassicError> {
        let src = src(raw.code);
        match (op, src) {
            (AluOp::Div | AluOp::Mod, Src::K(0)) => Err(ClassicError::DivisionByZero { pc }),
            (AluOp::Lsh | AluOp::Rsh, Src::K(k)) if k >= 32 => {
                Err(ClassicError::ShiftTooFar { pc, k })
            }
            _ => Ok(ClassicInsn::Alu(op, src)),
        }
    };
    let abs = |size: LoadSize| -> Result<ClassicInsn, ClassicError> {
        if k >= SKF_AD_OFF {
            let offset = k - SKF_AD_OFF;
            return match Ancillary::from_offset(offset) {
                Ok(field) => Ok(ClassicInsn::LoadA(LoadA::Ancillary { size, field })),
                Err(Some(name)) => Err(ClassicError::UnsupportedAncillary { pc, name }),
                Err(None) => Err(ClassicError::UnknownAncillary { pc, offset }),
            };
        }
        if k >= SKF_LL_OFF {
            return Err(ClassicError::NegativeOffset {
                pc,
                offset: k as i32,
            });
        }
        Ok(ClassicInsn::LoadA(LoadA::Abs { size, offset: k }))
    };

    let insn = match raw.code {
        c if c == LD | W | ABS => abs(LoadSize::Word)?,
        c if c == LD | H | ABS => abs(LoadSize::Half)?,
        c if c == LD | B | ABS => abs(LoadSize::Byte)?,
        c if c == LD | W | IND => ClassicInsn::LoadA(LoadA::Ind {
            size: LoadSize::Word,
            offset: k,
        }),
        c if c == LD | H | IND => ClassicInsn::LoadA(LoadA::Ind {
            size: LoadSize::Half,
            offset: k,
        }),
        c if c == LD | B | IND => ClassicInsn::LoadA(LoadA::Ind {
            size: LoadSize::Byte,
            offset: k,
        }),
        c if c == LD | W | LEN => ClassicInsn::LoadA(LoadA::Len),
        c if c == LD | IMM => ClassicInsn::LoadA(LoadA::Imm(k)),
        c if c == LD | W | MEM => ClassicInsn::LoadA(LoadA::Mem(scratch(k)?)),
        c if c == LDX | W | IMM => ClassicInsn::LoadX(LoadX::Imm(k)),
        c if c == LDX | W | LEN => ClassicInsn::LoadX(LoadX::Len),
        c if c == LDX | W | MEM => ClassicInsn::LoadX(LoadX::Mem(scratch(k)?)),
        c if c == LDX | B | MSH => ClassicInsn::LoadX(LoadX::Msh(k)),
        c if c == ST => ClassicInsn::StoreA(scratch(k)?),
        c if c == STX => ClassicInsn::StoreX(scratch(k)?),
        c if c == ALU | NEG => ClassicInsn::Neg,
        c if c <= 0xff && c & 0x07 == ALU && alu_op(c).is_some() => {
            alu(alu_op(c).expect("checked"))?
        }
        c if c == JMP => {
            jump_to(i64::from(k as i32))?;
            ClassicInsn::Ja(k as i32)
        }
        c if c & 0x07 == JMP && matches!(c & !X, 0x15 | 0x25 | 0x35 | 0x45) => {
            let cond = match c & 0xf0 {
                0x10 => Cond::Eq,
                0x20 => Cond::Gt,
                0x30 => Cond::Ge,
                _ => Cond::Set,
            };
            jump_to(i64::from(raw.jt))?;
            jump_to(i64::from(raw.jf))?;
            ClassicInsn::Jump {
                cond,
                src: src(c),
                jt: raw.jt,
                jf: raw.jf,
            }
        }
        c if c == RET | K => ClassicInsn::RetK(k),
        c if c == RET | A => ClassicInsn::RetA,
        c if c == MISC => ClassicInsn::Tax,
        c if c == MISC | 0x80 => ClassicInsn::Txa,
        code => return Err(ClassicError::UnknownOpcode { pc, code }),
    };
    Ok(insn)
}

/// The operation of an ALU opcode other than `neg` (bits 4-7).
fn alu_op(code: u16) -> Option<AluOp> {
    Some(match code & 0xf0 {
        0x00 => AluOp::Add,
        0x10 => AluOp::Sub,
        0x20 => AluOp::Mul,
        0x30 => AluOp::Div,
        0x40 => AluOp::Or,
        0x50 => AluOp::And,
        0x60 => AluOp::Lsh,
        0x70 => AluOp::Rsh,
        0x90 => AluOp::Mod,
        0xa0 => AluOp::Xor,
        _ => return None,
    })
}

/// The kernel's `check_load_and_stores()`: on every path, a scratch slot is written
/// before it is read. The slots known written at an instruction are those written on
/// every path into it: a forward sweep, repeated while a backward jump (a loop) still
/// removes slots from a loop head. Sets of 16 slots only shrink, so it ends.
fn check_scratch_written_before_read(insns: &[ClassicInsn]) -> Result<(), ClassicError> {
    let mut written_in: Vec<Option<u16>> = vec![None; insns.len()];
    written_in[0] = Some(0);
    let mut changed = true;
    while changed {
        changed = false;
        for (pc, insn) in insns.iter().enumerate() {
            // Unreachable instructions never run: nothing to check.
            let Some(mut written) = written_in[pc] else {
                continue;
            };
            match *insn {
                ClassicInsn::LoadA(LoadA::Mem(m)) | ClassicInsn::LoadX(LoadX::Mem(m))
                    if written & (1 << m) == 0 =>
                {
                    return Err(ClassicError::ScratchReadBeforeWrite { pc, k: m });
                }
                ClassicInsn::StoreA(m) | ClassicInsn::StoreX(m) => written |= 1 << m,
                _ => {}
            }
            for next in insn.successors(pc) {
                let merged = written_in[next].map_or(written, |w| w & written);
                if written_in[next] != Some(merged) {
                    written_in[next] = Some(merged);
                    changed |= next <= pc;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(code, jt, jf, k)`, as `tcpdump -dd` prints it.
    type Raw = (u16, u8, u8, u32);

    fn program(raw: &[Raw]) -> Result<Program, ClassicError> {
        let raw: Vec<RawInsn> = raw
            .iter()
            .map(|&(code, jt, jf, k)| RawInsn::new(code, jt, jf, k))
            .collect();
        Program::new(&raw)
    }

    #[test]
    fn a_cooked_program_reads_what_the_kernel_has_as_libpcap_fixes_it() {
        // tcpdump -i any -d 'ip and udp[2:2] = 53 and inbound': ldh [0]; ldb [29];
        // ldxb 4*([20]&0xf); ldh [x + 22]; ldb [10]; ld [4].
        let cooked = program(&[
            (0x28, 0, 0, 0),
            (0x30, 0, 0, 29),
            (0xb1, 0, 0, 20),
            (0x48, 0, 0, 22),
            (0x48, 0, 0, 4),
            (0x30, 0, 0, 10),
            (0x20, 0, 0, 4),
            (0x06, 0, 0, 1),
        ])
        .unwrap()
        .for_cooked_socket(Cooked::Sll2)
        .unwrap();
        let ancillary = |size, field| ClassicInsn::LoadA(LoadA::Ancillary { size, field });
        assert_eq!(
            cooked.insns(),
            [
                ancillary(LoadSize::Half, Ancillary::Protocol),
                ClassicInsn::LoadA(LoadA::Abs {
                    size: LoadSize::Byte,
                    offset: 9
                }),
                ClassicInsn::LoadX(LoadX::Msh(0)),
                ClassicInsn::LoadA(LoadA::Ind {
                    size: LoadSize::Half,
                    offset: 2
                }),
                // An indexed load of a field: nothing the kernel can read.
                ClassicInsn::LoadA(LoadA::Ind {
                    size: LoadSize::Half,
                    offset: u32::MAX
                }),
                ancillary(LoadSize::Byte, Ancillary::PktType),
                ancillary(LoadSize::Word, Ancillary::Ifindex),
                ClassicInsn::RetK(1),
            ]
        );
        // The link-layer address: libpcap filters in user space; refused.
        let address = program(&[(0x28, 0, 0, 12), (0x06, 0, 0, 1)]).unwrap();
        assert_eq!(
            address.for_cooked_socket(Cooked::Sll2),
            Err(CookedError {
                pc: 0,
                offset: 12,
                header: Cooked::Sll2
            })
        );
        // LINUX_SLL: packet type at 0, protocol at 14, payload from 16.
        let sll = program(&[
            (0x28, 0, 0, 14),
            (0x30, 0, 0, 0),
            (0x30, 0, 0, 25),
            (0x06, 0, 0, 1),
        ])
        .unwrap()
        .for_cooked_socket(Cooked::Sll)
        .unwrap();
        assert_eq!(
            &sll.insns()[..3],
            [
                ancillary(LoadSize::Half, Ancillary::Protocol),
                ancillary(LoadSize::Byte, Ancillary::PktType),
                ClassicInsn::LoadA(LoadA::Abs {
                    size: LoadSize::Byte,
                    offset: 9
                }),
            ]
        );
    }

    /// `tcpdump -d 'ip'` on an Ethernet savefile.
    #[test]
    fn lists_like_tcpdump() {
        let p = program(&[
            (0x28, 0, 0, 12),
            (0x15, 0, 1, 0x800),
            (0x06, 0, 0, 262144),
            (0x06, 0, 0, 0),
        ])
        .unwrap();
        assert_eq!(
            p.to_string(),
            "(000) ldh      [12]\n\
             (001) jeq      #0x800           jt 2\tjf 3\n\
             (002) ret      #262144\n\
             (003) ret      #0\n"
        );
    }

    #[test]
    fn decodes_every_opcode_class() {
        let table: &[(Raw, ClassicInsn)] = &[
            (
                (0x20, 0, 0, 26),
                ClassicInsn::LoadA(LoadA::Abs {
                    size: LoadSize::Word,
                    offset: 26,
                }),
            ),
            (
                (0x48, 0, 0, 14),
                ClassicInsn::LoadA(LoadA::Ind {
                    size: LoadSize::Half,
                    offset: 14,
                }),
            ),
            ((0x80, 0, 0, 0), ClassicInsn::LoadA(LoadA::Len)),
            ((0x00, 0, 0, 7), ClassicInsn::LoadA(LoadA::Imm(7))),
            ((0x61, 0, 0, 3), ClassicInsn::LoadX(LoadX::Mem(3))),
            ((0xb1, 0, 0, 14), ClassicInsn::LoadX(LoadX::Msh(14))),
            ((0x81, 0, 0, 0), ClassicInsn::LoadX(LoadX::Len)),
            ((0x01, 0, 0, 9), ClassicInsn::LoadX(LoadX::Imm(9))),
            ((0x02, 0, 0, 15), ClassicInsn::StoreA(15)),
            ((0x03, 0, 0, 0), ClassicInsn::StoreX(0)),
            ((0x0c, 0, 0, 0), ClassicInsn::Alu(AluOp::Add, Src::X)),
            ((0x94, 0, 0, 3), ClassicInsn::Alu(AluOp::Mod, Src::K(3))),
            ((0x74, 0, 0, 31), ClassicInsn::Alu(AluOp::Rsh, Src::K(31))),
            ((0x84, 0, 0, 0), ClassicInsn::Neg),
            (
                (0x45, 0, 1, 0x1fff),
                ClassicInsn::Jump {
                    cond: Cond::Set,
                    src: Src::K(0x1fff),
                    jt: 0,
                    jf: 1,
                },
            ),
            (
                (0x3d, 1, 0, 0),
                ClassicInsn::Jump {
                    cond: Cond::Ge,
                    src: Src::X,
                    jt: 1,
                    jf: 0,
                },
            ),
            ((0x07, 0, 0, 0), ClassicInsn::Tax),
            ((0x87, 0, 0, 0), ClassicInsn::Txa),
            ((0x16, 0, 0, 0), ClassicInsn::RetA),
            (
                (0x30, 0, 0, SKF_AD_OFF + 48),
                ClassicInsn::LoadA(LoadA::Ancillary {
                    size: LoadSize::Byte,
                    field: Ancillary::VlanTagPresent,
                }),
            ),
        ];
        for &((code, jt, jf, k), want) in table {
            // Followed by enough returns for the jumps to land inside.
            let p = program(&[(code, jt, jf, k), (0x06, 0, 0, 1), (0x06, 0, 0, 0)]);
            let p = match p {
                Ok(p) => p,
                // M[3] read first: pair it with a store so only decoding is tested.
                Err(ClassicError::ScratchReadBeforeWrite { .. }) => program(&[
                    (0x02, 0, 0, 3),
                    (code, jt, jf, k),
                    (0x06, 0, 0, 1),
                    (0x06, 0, 0, 0),
                ])
                .unwrap(),
                Err(e) => panic!("{code:#x}: {e}"),
            };
            assert!(
                p.insns().contains(&want),
                "{code:#x} decoded as {:?}",
                p.insns()
            );
        }
    }

    #[test]
    fn refuses_what_the_kernel_refuses() {
        let ret = (0x06, 0, 0, 0);
        let cases: &[(&[Raw], ClassicError)] = &[
            (&[], ClassicError::Empty),
            (
                &[(0x34, 0, 0, 0), ret],
                ClassicError::DivisionByZero { pc: 0 },
            ),
            (
                &[(0x94, 0, 0, 0), ret],
                ClassicError::DivisionByZero { pc: 0 },
            ),
            (
                &[(0x64, 0, 0, 32), ret],
                ClassicError::ShiftTooFar { pc: 0, k: 32 },
            ),
            (
                &[(0x02, 0, 0, 16), ret],
                ClassicError::ScratchOutOfRange { pc: 0, k: 16 },
            ),
            (
                &[(0x15, 0, 2, 0), ret],
                ClassicError::JumpOutOfRange {
                    pc: 0,
                    target: 3,
                    len: 2,
                },
            ),
            (
                &[(0x05, 0, 0, 1), ret],
                ClassicError::JumpOutOfRange {
                    pc: 0,
                    target: 2,
                    len: 2,
                },
            ),
            (
                &[(0x05, 0, 0, -2i32 as u32), ret],
                ClassicError::JumpOutOfRange {
                    pc: 0,
                    target: -1,
                    len: 2,
                },
            ),
            (
                &[ret, (0x28, 0, 0, 12)],
                ClassicError::NoFinalReturn { pc: 1 },
            ),
            (
                &[(0xff, 0, 0, 0), ret],
                ClassicError::UnknownOpcode { pc: 0, code: 0xff },
            ),
            // BPF_LD | BPF_H | BPF_IMM: only the W form exists.
            (
                &[(0x08, 0, 0, 0), ret],
                ClassicError::UnknownOpcode { pc: 0, code: 0x08 },
            ),
            (
                &[(0x60, 0, 0, 2), ret],
                ClassicError::ScratchReadBeforeWrite { pc: 0, k: 2 },
            ),
            (
                &[(0x20, 0, 0, SKF_AD_OFF + 28), ret],
                ClassicError::UnsupportedAncillary {
                    pc: 0,
                    name: "SKF_AD_HATYPE",
                },
            ),
            (
                &[(0x20, 0, 0, SKF_AD_OFF + 64), ret],
                ClassicError::UnknownAncillary { pc: 0, offset: 64 },
            ),
            (
                &[(0x30, 0, 0, SKF_LL_OFF), ret],
                ClassicError::NegativeOffset {
                    pc: 0,
                    offset: -0x200000,
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(program(raw).unwrap_err(), *want, "{raw:x?}");
        }
        let too_long = vec![(0x06, 0, 0, 0); MAX_INSNS + 1];
        assert_eq!(
            program(&too_long).unwrap_err(),
            ClassicError::TooLong { len: MAX_INSNS + 1 }
        );
    }

    #[test]
    fn a_guard_against_outgoing_packets_keeps_the_programs_jumps() {
        let p = program(&[
            (0x28, 0, 0, 12),
            (0x15, 0, 1, 0x800),
            (0x06, 0, 0, 262144),
            (0x06, 0, 0, 0),
        ])
        .unwrap();
        assert_eq!(
            p.rejecting_outgoing().to_string(),
            "(000) ldh      [type]\n\
             (001) jeq      #0x4             jt 2\tjf 3\n\
             (002) ret      #0\n\
             (003) ld       #0x0\n\
             (004) ldh      [12]\n\
             (005) jeq      #0x800           jt 6\tjf 7\n\
             (006) ret      #262144\n\
             (007) ret      #0\n"
        );
    }

    /// A loop (a backward `ja`, as in `protochain`) is followed around: a slot read at
    /// the loop head must be written before the loop, not only inside it.
    #[test]
    fn scratch_checks_follow_loops() {
        let read_in_loop_before_write = [
            (0x15, 0, 3, 0),            // 0: jeq #0 jt 1 jf 4
            (0x60, 0, 0, 0),            // 1: ld M[0]
            (0x02, 0, 0, 0),            // 2: st M[0]
            (0x05, 0, 0, -4i32 as u32), // 3: ja 0
            (0x16, 0, 0, 0),
        ];
        assert_eq!(
            program(&read_in_loop_before_write).unwrap_err(),
            ClassicError::ScratchReadBeforeWrite { pc: 1, k: 0 }
        );
        let written_first = [
            (0x02, 0, 0, 0),
            (0x15, 0, 3, 0),
            (0x60, 0, 0, 0),
            (0x02, 0, 0, 0),
            (0x05, 0, 0, -4i32 as u32),
            (0x16, 0, 0, 0),
        ];
        let p = program(&written_first).unwrap();
        assert!(p.has_loops());
        assert!(p.to_string().contains("(004) ja       1\n"), "{p}");
    }

    /// A slot written on only one of two paths is not written at the join.
    #[test]
    fn scratch_must_be_written_on_every_path() {
        let one_path = [
            (0x15, 0, 1, 0), // jeq #0 jt 1 jf 2
            (0x02, 0, 0, 1), // st M[1]
            (0x60, 0, 0, 1), // ld M[1]
            (0x16, 0, 0, 0),
        ];
        assert_eq!(
            program(&one_path).unwrap_err(),
            ClassicError::ScratchReadBeforeWrite { pc: 2, k: 1 }
        );
        let both_paths = [
            (0x02, 0, 0, 1),
            (0x15, 0, 1, 0),
            (0x02, 0, 0, 1),
            (0x60, 0, 0, 1),
            (0x16, 0, 0, 0),
        ];
        program(&both_paths).unwrap();
    }
}
