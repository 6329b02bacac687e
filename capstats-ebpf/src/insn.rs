//! eBPF instructions as values.
//!
//! An [`Insn`] is a plain value with a readable [`Display`] (the notation of the kernel
//! verifier and `bpftool prog dump xlated`); only [`Insn::encode`] turns it into the
//! kernel's 8-byte `struct bpf_insn` slots. A 64-bit immediate load is one value that
//! encodes to two slots. Jumps name a [`Target`]: a [`Label`] while a program is being
//! built, a slot offset once [`crate::asm::Assembler`] has resolved it. A map is named
//! by a [`MapRef`] (`r1 = map[counters]`): translation needs no live kernel object,
//! and a program can be printed and compared as data; the loader says which map each
//! reference stands for ([`crate::program::MapBinding`]), and encoding puts in its fd.

use std::fmt;

/// An eBPF register. `R10` is the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

impl Reg {
    /// The register number as the kernel encodes it (4 bits).
    pub const fn number(self) -> u8 {
        self as u8
    }
}

/// Width of an operation: `Alu` vs `Alu64`, `Jmp32` vs `Jmp`.
///
/// 32-bit ALU results are zero-extended into the 64-bit register, which is how the
/// 32-bit classic accumulator and index register are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    W32,
    W64,
}

/// Memory access size, bits 3-4 of a load/store opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `BPF_B`, 0x10.
    B,
    /// `BPF_H`, 0x08.
    H,
    /// `BPF_W`, 0x00.
    W,
    /// `BPF_DW`, 0x18.
    DW,
}

impl Size {
    const fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }

    const fn c_type(self) -> &'static str {
        match self {
            Size::B => "u8",
            Size::H => "u16",
            Size::W => "u32",
            Size::DW => "u64",
        }
    }
}

/// Arithmetic operation, bits 4-7 of an ALU opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    Div,
    Or,
    And,
    Lsh,
    Rsh,
    Mod,
    Xor,
    Mov,
    Arsh,
}

impl AluOp {
    const fn bits(self) -> u8 {
        match self {
            AluOp::Add => 0x00,
            AluOp::Sub => 0x10,
            AluOp::Mul => 0x20,
            AluOp::Div => 0x30,
            AluOp::Or => 0x40,
            AluOp::And => 0x50,
            AluOp::Lsh => 0x60,
            AluOp::Rsh => 0x70,
            AluOp::Mod => 0x90,
            AluOp::Xor => 0xa0,
            AluOp::Mov => 0xb0,
            AluOp::Arsh => 0xc0,
        }
    }

    const fn symbol(self) -> &'static str {
        match self {
            AluOp::Add => "+=",
            AluOp::Sub => "-=",
            AluOp::Mul => "*=",
            AluOp::Div => "/=",
            AluOp::Or => "|=",
            AluOp::And => "&=",
            AluOp::Lsh => "<<=",
            AluOp::Rsh => ">>=",
            AluOp::Mod => "%=",
            AluOp::Xor => "^=",
            AluOp::Mov => "=",
            AluOp::Arsh => "s>>=",
        }
    }
}

/// Comparison of a conditional jump, bits 4-7 of a JMP opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JmpOp {
    Eq,
    Gt,
    Ge,
    Set,
    Ne,
    Sgt,
    Sge,
    Lt,
    Le,
    Slt,
    Sle,
}

impl JmpOp {
    const fn bits(self) -> u8 {
        match self {
            JmpOp::Eq => 0x10,
            JmpOp::Gt => 0x20,
            JmpOp::Ge => 0x30,
            JmpOp::Set => 0x40,
            JmpOp::Ne => 0x50,
            JmpOp::Sgt => 0x60,
            JmpOp::Sge => 0x70,
            JmpOp::Lt => 0xa0,
            JmpOp::Le => 0xb0,
            JmpOp::Slt => 0xc0,
            JmpOp::Sle => 0xd0,
        }
    }

    const fn symbol(self) -> &'static str {
        match self {
            JmpOp::Eq => "==",
            JmpOp::Gt => ">",
            JmpOp::Ge => ">=",
            JmpOp::Set => "&",
            JmpOp::Ne => "!=",
            JmpOp::Sgt => "s>",
            JmpOp::Sge => "s>=",
            JmpOp::Lt => "<",
            JmpOp::Le => "<=",
            JmpOp::Slt => "s<",
            JmpOp::Sle => "s<=",
        }
    }

    /// The comparison that is true exactly when `self` is false, if eBPF has one
    /// (`Set` has no negation).
    pub const fn negate(self) -> Option<JmpOp> {
        Some(match self {
            JmpOp::Eq => JmpOp::Ne,
            JmpOp::Ne => JmpOp::Eq,
            JmpOp::Gt => JmpOp::Le,
            JmpOp::Le => JmpOp::Gt,
            JmpOp::Ge => JmpOp::Lt,
            JmpOp::Lt => JmpOp::Ge,
            JmpOp::Sgt => JmpOp::Sle,
            JmpOp::Sle => JmpOp::Sgt,
            JmpOp::Sge => JmpOp::Slt,
            JmpOp::Slt => JmpOp::Sge,
            JmpOp::Set => return None,
        })
    }
}

/// The second operand of an ALU operation or comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// `BPF_X`: a register.
    Reg(Reg),
    /// `BPF_K`: the 32-bit immediate, sign-extended by 64-bit operations.
    Imm(i32),
}

/// Byte order conversion (`BPF_END`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// `BPF_TO_BE`: to big endian (network order); on x86 a byte swap.
    Be,
    /// `BPF_TO_LE`: to little endian; on x86 a zero-extension.
    Le,
}

/// Kernel helper functions the generated programs call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    MapLookupElem,
    GetPrandomU32,
    GetSmpProcessorId,
    SkbLoadBytes,
    XdpGetBuffLen,
    XdpLoadBytes,
    TailCall,
}

impl Helper {
    /// The helper's number in `enum bpf_func_id`.
    pub const fn id(self) -> i32 {
        match self {
            Helper::MapLookupElem => 1,
            Helper::GetPrandomU32 => 7,
            Helper::GetSmpProcessorId => 8,
            Helper::SkbLoadBytes => 26,
            Helper::XdpGetBuffLen => 188,
            Helper::XdpLoadBytes => 189,
            Helper::TailCall => 12,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Helper::MapLookupElem => "bpf_map_lookup_elem",
            Helper::GetPrandomU32 => "bpf_get_prandom_u32",
            Helper::GetSmpProcessorId => "bpf_get_smp_processor_id",
            Helper::SkbLoadBytes => "bpf_skb_load_bytes",
            Helper::XdpGetBuffLen => "bpf_xdp_get_buff_len",
            Helper::XdpLoadBytes => "bpf_xdp_load_bytes",
            Helper::TailCall => "bpf_tail_call",
        }
    }
}

/// A symbolic jump destination, resolved to an offset by the assembler. A program may
/// hold several filters (one per session); labels name the filter they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// The first instruction translated from classic instruction `pc` of `filter`.
    Classic { filter: usize, pc: usize },
    /// `filter` matched: its counting code.
    Accept(usize),
    /// `filter` is done: the next filter, or the program's return after the last.
    Reject(usize),
    /// A label private to one expansion, numbered by the translator.
    Local(usize),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Filter 0 unadorned: a one-filter program reads like its classic listing.
        match *self {
            Label::Classic { filter: 0, pc } => write!(f, "c{pc}"),
            Label::Classic { filter, pc } => write!(f, "f{filter}.c{pc}"),
            Label::Accept(0) => f.write_str("accept"),
            Label::Accept(n) => write!(f, "accept{n}"),
            Label::Reject(0) => f.write_str("reject"),
            Label::Reject(n) => write!(f, "reject{n}"),
            Label::Local(n) => write!(f, "l{n}"),
        }
    }
}

/// A map a program refers to, by what it is to the program rather than by a file
/// descriptor: resolved to a live map only when the program is encoded for loading
/// (`BPF_PSEUDO_MAP_FD`), from the binding its loader gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapRef {
    /// Counter map `n` of the program (a per-CPU array of counters): a program of
    /// filters alone has one per filter, or one for all, as its translation was told.
    Counters(u32),
    /// A shared program's dispatch map (see [`crate::shared::maps`]).
    Dispatch,
    /// A shared program's counter table: entry → counter map.
    CounterTable,
    /// The prog array of the chain the program belongs to (see [`crate::chain`]).
    ProgArray,
    /// A shared program's presence filter: one bit per hash of the dispatch map's keys,
    /// read in place ([`Insn::LoadMapValue`]) before each look-up.
    Presence,
}

impl fmt::Display for MapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counter map 0 unadorned, as labels of filter 0 are: one filter reads plainly.
        match *self {
            MapRef::Counters(0) => f.write_str("counters"),
            MapRef::Counters(n) => write!(f, "counters{n}"),
            MapRef::Dispatch => f.write_str("dispatch"),
            MapRef::CounterTable => f.write_str("table"),
            MapRef::ProgArray => f.write_str("chain"),
            MapRef::Presence => f.write_str("presence"),
        }
    }
}

/// Where a jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Label(Label),
    /// Slots to skip after the jump's own slot, as encoded.
    Offset(i16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Label(label) => write!(f, "{label}"),
            Target::Offset(off) => write!(f, "{off:+}"),
        }
    }
}

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// `dst op= src` (`BPF_ALU`/`BPF_ALU64`), `Mov` included.
    Alu {
        width: Width,
        op: AluOp,
        dst: Reg,
        src: Operand,
    },
    /// `dst = -dst`.
    Neg { width: Width, dst: Reg },
    /// `dst = be16/be32/le16... dst`: byte order conversion of the low `bits`.
    Endian { to: Endian, bits: u8, dst: Reg },
    /// `dst = imm64` (`BPF_LD | BPF_DW | BPF_IMM`), two slots.
    LoadImm64 { dst: Reg, imm: i64 },
    /// `dst = map[map]` (`BPF_LD | BPF_DW | BPF_IMM`, `BPF_PSEUDO_MAP_FD`), two slots:
    /// the address of the map the reference is bound to when the program is loaded.
    LoadMap { dst: Reg, map: MapRef },
    /// `dst = &map[map] + offset` (`BPF_LD | BPF_DW | BPF_IMM`, `BPF_PSEUDO_MAP_VALUE`),
    /// two slots: the address of byte `offset` of the value of an array map of one
    /// entry, bound as [`Insn::LoadMap`]'s map is. The verifier knows it is not null,
    /// and no look-up (no call) is made for it.
    LoadMapValue { dst: Reg, map: MapRef, offset: u32 },
    /// `r0 = ntoh(*(size *)skb[offset])` (`BPF_LD | BPF_ABS`). Needs the context in `r6`;
    /// clobbers `r1`-`r5`; an out-of-bounds offset ends the program returning 0.
    LoadAbs { size: Size, offset: i32 },
    /// `r0 = ntoh(*(size *)skb[src + offset])` (`BPF_LD | BPF_IND`), as `LoadAbs`.
    LoadInd { size: Size, src: Reg, offset: i32 },
    /// `dst = *(size *)(base + offset)` (`BPF_LDX | BPF_MEM`).
    Load {
        size: Size,
        dst: Reg,
        base: Reg,
        offset: i16,
    },
    /// `*(size *)(base + offset) = src` (`BPF_ST`/`BPF_STX | BPF_MEM`).
    Store {
        size: Size,
        base: Reg,
        offset: i16,
        src: Operand,
    },
    /// `goto target` (`BPF_JA`).
    Jump { target: Target },
    /// `may_goto target` (`BPF_JCOND`, Linux 6.9): falls through while the program's
    /// loop budget lasts, jumps once it is spent. Lets the verifier accept a loop whose
    /// bound it cannot see.
    MayGoto { target: Target },
    /// `if dst op src goto target`.
    Branch {
        width: Width,
        op: JmpOp,
        dst: Reg,
        src: Operand,
        target: Target,
    },
    /// `call helper`.
    Call(Helper),
    /// `exit`: return `r0`.
    Exit,
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const MODE_IMM: u8 = 0x00;
const MODE_ABS: u8 = 0x20;
const MODE_IND: u8 = 0x40;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_NEG: u8 = 0x80;
const OP_END: u8 = 0xd0;
const OP_JA: u8 = 0x00;
const OP_JCOND: u8 = 0xe0;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
const PSEUDO_MAP_FD: u8 = 1;
/// `src_reg` of a 64-bit load of a map value's address (`BPF_PSEUDO_MAP_VALUE`).
const PSEUDO_MAP_VALUE: u8 = 2;

/// Why an instruction could not be encoded: it still names something only its
/// builder or its loader can resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Its jump names a label: only programs the assembler resolved encode.
    #[error("instruction `{insn}` still jumps to label {label}: resolve labels before encoding")]
    UnresolvedJump { insn: Insn, label: Label },
    /// It refers to a map the loader bound to none.
    #[error("`{insn}` refers to map {map}, which is bound to no map")]
    UnboundMap { insn: Insn, map: MapRef },
}

impl Insn {
    /// How many 8-byte slots the instruction takes in the kernel's encoding.
    pub const fn slots(&self) -> usize {
        match self {
            Insn::LoadImm64 { .. } | Insn::LoadMap { .. } | Insn::LoadMapValue { .. } => 2,
            _ => 1,
        }
    }

    /// The jump target, if the instruction jumps.
    pub const fn target(&self) -> Option<Target> {
        match self {
            Insn::Jump { target } | Insn::MayGoto { target } | Insn::Branch { target, .. } => {
                Some(*target)
            }
            _ => None,
        }
    }

    /// The same instruction with its jump target replaced.
    pub fn with_target(mut self, new: Target) -> Insn {
        if let Insn::Jump { target } | Insn::MayGoto { target } | Insn::Branch { target, .. } =
            &mut self
        {
            *target = new;
        }
        self
    }

    /// The map the instruction refers to, if it does.
    pub const fn map(&self) -> Option<MapRef> {
        match self {
            Insn::LoadMap { map, .. } | Insn::LoadMapValue { map, .. } => Some(*map),
            _ => None,
        }
    }

    /// Appends the kernel's encoding (`struct bpf_insn`, little endian) to `out`, each
    /// map reference as the fd `fd_of` gives it.
    pub fn encode(
        &self,
        fd_of: impl Fn(MapRef) -> Option<i32>,
        out: &mut Vec<[u8; 8]>,
    ) -> Result<(), EncodeError> {
        let slot = |code: u8, dst: Reg, src: u8, off: i16, imm: i32| {
            let mut b = [0u8; 8];
            b[0] = code;
            b[1] = dst.number() | (src << 4);
            b[2..4].copy_from_slice(&off.to_le_bytes());
            b[4..8].copy_from_slice(&imm.to_le_bytes());
            b
        };
        let operand = |src: Operand| match src {
            Operand::Reg(r) => (SRC_X, r.number(), 0),
            Operand::Imm(imm) => (SRC_K, 0, imm),
        };
        let offset = |target: Target| match target {
            Target::Offset(off) => Ok(off),
            Target::Label(label) => Err(EncodeError::UnresolvedJump { insn: *self, label }),
        };
        match *self {
            Insn::Alu {
                width,
                op,
                dst,
                src,
            } => {
                let class = if width == Width::W64 {
                    CLASS_ALU64
                } else {
                    CLASS_ALU
                };
                let (source, src_reg, imm) = operand(src);
                out.push(slot(class | op.bits() | source, dst, src_reg, 0, imm));
            }
            Insn::Neg { width, dst } => {
                let class = if width == Width::W64 {
                    CLASS_ALU64
                } else {
                    CLASS_ALU
                };
                out.push(slot(class | OP_NEG, dst, 0, 0, 0));
            }
            Insn::Endian { to, bits, dst } => {
                let source = if to == Endian::Be { SRC_X } else { SRC_K };
                out.push(slot(
                    CLASS_ALU | OP_END | source,
                    dst,
                    0,
                    0,
                    i32::from(bits),
                ));
            }
            Insn::LoadImm64 { dst, imm } => {
                let code = CLASS_LD | Size::DW.bits() | MODE_IMM;
                out.push(slot(code, dst, 0, 0, imm as i32));
                out.push(slot(0, Reg::R0, 0, 0, (imm >> 32) as i32));
            }
            Insn::LoadMap { dst, map } => {
                let fd = fd_of(map).ok_or(EncodeError::UnboundMap { insn: *self, map })?;
                let code = CLASS_LD | Size::DW.bits() | MODE_IMM;
                out.push(slot(code, dst, PSEUDO_MAP_FD, 0, fd));
                out.push(slot(0, Reg::R0, 0, 0, 0));
            }
            Insn::LoadMapValue { dst, map, offset } => {
                let fd = fd_of(map).ok_or(EncodeError::UnboundMap { insn: *self, map })?;
                let code = CLASS_LD | Size::DW.bits() | MODE_IMM;
                out.push(slot(code, dst, PSEUDO_MAP_VALUE, 0, fd));
                out.push(slot(0, Reg::R0, 0, 0, offset as i32));
            }
            Insn::LoadAbs { size, offset } => {
                out.push(slot(
                    CLASS_LD | size.bits() | MODE_ABS,
                    Reg::R0,
                    0,
                    0,
                    offset,
                ));
            }
            Insn::LoadInd { size, src, offset } => {
                let code = CLASS_LD | size.bits() | MODE_IND;
                out.push(slot(code, Reg::R0, src.number(), 0, offset));
            }
            Insn::Load {
                size,
                dst,
                base,
                offset,
            } => {
                let code = CLASS_LDX | size.bits() | MODE_MEM;
                out.push(slot(code, dst, base.number(), offset, 0));
            }
            Insn::Store {
                size,
                base,
                offset,
                src,
            } => match src {
                Operand::Reg(src) => {
                    let code = CLASS_STX | size.bits() | MODE_MEM;
                    out.push(slot(code, base, src.number(), offset, 0));
                }
                Operand::Imm(imm) => {
                    let code = CLASS_ST | size.bits() | MODE_MEM;
                    out.push(slot(code, base, 0, offset, imm));
                }
            },
            Insn::Jump { target } => {
                out.push(slot(CLASS_JMP | OP_JA, Reg::R0, 0, offset(target)?, 0));
            }
            Insn::MayGoto { target } => {
                out.push(slot(CLASS_JMP | OP_JCOND, Reg::R0, 0, offset(target)?, 0));
            }
            Insn::Branch {
                width,
                op,
                dst,
                src,
                target,
            } => {
                let class = if width == Width::W64 {
                    CLASS_JMP
                } else {
                    CLASS_JMP32
                };
                let (source, src_reg, imm) = operand(src);
                let code = class | op.bits() | source;
                out.push(slot(code, dst, src_reg, offset(target)?, imm));
            }
            Insn::Call(helper) => {
                out.push(slot(CLASS_JMP | OP_CALL, Reg::R0, 0, 0, helper.id()));
            }
            Insn::Exit => out.push(slot(CLASS_JMP | OP_EXIT, Reg::R0, 0, 0, 0)),
        }
        Ok(())
    }
}

/// `r3` for 64-bit operations, `w3` for 32-bit ones, as the verifier prints them.
struct Named(Reg, Width);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.1 == Width::W64 { 'r' } else { 'w' };
        write!(f, "{prefix}{}", self.0.number())
    }
}

struct Value(Operand, Width);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Operand::Reg(r), width) => Named(r, width).fmt(f),
            // 32-bit operations see the immediate as the classic program's u32.
            (Operand::Imm(imm), Width::W32) if (0..=9).contains(&imm) => write!(f, "{imm}"),
            (Operand::Imm(imm), Width::W32) => write!(f, "{:#x}", imm as u32),
            // 64-bit ones sign-extend it: offsets and -1 read best in decimal.
            (Operand::Imm(imm), Width::W64) if imm.unsigned_abs() < 4096 => write!(f, "{imm}"),
            (Operand::Imm(imm), Width::W64) if imm < 0 => write!(f, "-{:#x}", imm.unsigned_abs()),
            (Operand::Imm(imm), Width::W64) => write!(f, "{imm:#x}"),
        }
    }
}

fn signed(off: impl Into<i64>) -> String {
    let off = off.into();
    if off < 0 {
        format!("- {}", -off)
    } else {
        format!("+ {off}")
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Insn::Alu {
                width,
                op,
                dst,
                src,
            } => write!(
                f,
                "{} {} {}",
                Named(dst, width),
                op.symbol(),
                Value(src, width)
            ),
            Insn::Neg { width, dst } => {
                write!(f, "{} = -{}", Named(dst, width), Named(dst, width))
            }
            Insn::Endian { to, bits, dst } => {
                let order = if to == Endian::Be { "be" } else { "le" };
                write!(f, "r{} = {order}{bits} r{}", dst.number(), dst.number())
            }
            Insn::LoadImm64 { dst, imm } => write!(f, "r{} = {imm:#x} ll", dst.number()),
            Insn::LoadMap { dst, map } => write!(f, "r{} = map[{map}]", dst.number()),
            Insn::LoadMapValue { dst, map, offset } => {
                write!(f, "r{} = &map[{map}].value[{offset}]", dst.number())
            }
            Insn::LoadAbs { size, offset } => {
                write!(f, "r0 = *({} *)skb[{offset}]", size.c_type())
            }
            Insn::LoadInd { size, src, offset } => write!(
                f,
                "r0 = *({} *)skb[r{} {}]",
                size.c_type(),
                src.number(),
                signed(offset)
            ),
            Insn::Load {
                size,
                dst,
                base,
                offset,
            } => write!(
                f,
                "r{} = *({} *)(r{} {})",
                dst.number(),
                size.c_type(),
                base.number(),
                signed(offset)
            ),
            Insn::Store {
                size,
                base,
                offset,
                src,
            } => write!(
                f,
                "*({} *)(r{} {}) = {}",
                size.c_type(),
                base.number(),
                signed(offset),
                Value(src, Width::W64)
            ),
            Insn::Jump { target } => write!(f, "goto {target}"),
            Insn::MayGoto { target } => write!(f, "may_goto {target}"),
            Insn::Branch {
                width,
                op,
                dst,
                src,
                target,
            } => write!(
                f,
                "if {} {} {} goto {target}",
                Named(dst, width),
                op.symbol(),
                Value(src, width)
            ),
            Insn::Call(helper) => write!(f, "call {}#{}", helper.name(), helper.id()),
            Insn::Exit => f.write_str("exit"),
        }
    }
}

/// Short constructors that read like assembly: `mov32(R0, Imm(0))`.
pub mod build {
    use super::*;

    pub const fn alu32(op: AluOp, dst: Reg, src: Operand) -> Insn {
        Insn::Alu {
            width: Width::W32,
            op,
            dst,
            src,
        }
    }

    pub const fn alu64(op: AluOp, dst: Reg, src: Operand) -> Insn {
        Insn::Alu {
            width: Width::W64,
            op,
            dst,
            src,
        }
    }

    pub const fn mov32(dst: Reg, src: Operand) -> Insn {
        alu32(AluOp::Mov, dst, src)
    }

    pub const fn mov64(dst: Reg, src: Operand) -> Insn {
        alu64(AluOp::Mov, dst, src)
    }

    pub const fn load(size: Size, dst: Reg, base: Reg, offset: i16) -> Insn {
        Insn::Load {
            size,
            dst,
            base,
            offset,
        }
    }

    pub const fn store(size: Size, base: Reg, offset: i16, src: Operand) -> Insn {
        Insn::Store {
            size,
            base,
            offset,
            src,
        }
    }

    pub const fn goto(label: Label) -> Insn {
        Insn::Jump {
            target: Target::Label(label),
        }
    }

    pub const fn branch32(op: JmpOp, dst: Reg, src: Operand, label: Label) -> Insn {
        Insn::Branch {
            width: Width::W32,
            op,
            dst,
            src,
            target: Target::Label(label),
        }
    }

    pub const fn branch64(op: JmpOp, dst: Reg, src: Operand, label: Label) -> Insn {
        Insn::Branch {
            width: Width::W64,
            op,
            dst,
            src,
            target: Target::Label(label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use Operand::{Imm, Reg as R};
    use Reg::*;

    /// The fd the encoding tests bind every map reference to.
    const FD: i32 = 5;

    fn hex(insn: Insn) -> Vec<String> {
        let mut out = Vec::new();
        insn.encode(|_| Some(FD), &mut out).unwrap();
        out.iter()
            .map(|slot| slot.iter().map(|b| format!("{b:02x}")).collect())
            .collect()
    }

    /// Encodings checked against the kernel's `BPF_*` macros (include/linux/filter.h).
    #[test]
    fn encodes_like_the_kernel_macros() {
        let table: &[(Insn, &str, &[&str])] = &[
            // BPF_MOV64_REG(BPF_REG_6, BPF_REG_1)
            (mov64(R6, R(R1)), "r6 = r1", &["bf16000000000000"]),
            // BPF_MOV32_IMM(BPF_REG_0, 0)
            (mov32(R0, Imm(0)), "w0 = 0", &["b400000000000000"]),
            // BPF_ALU32_IMM(BPF_AND, BPF_REG_0, 0xf)
            (
                alu32(AluOp::And, R0, Imm(15)),
                "w0 &= 0xf",
                &["540000000f000000"],
            ),
            // BPF_ALU32_REG(BPF_DIV, BPF_REG_0, BPF_REG_7)
            (
                alu32(AluOp::Div, R0, R(R7)),
                "w0 /= w7",
                &["3c70000000000000"],
            ),
            // BPF_ALU64_IMM(BPF_ADD, BPF_REG_2, -4)
            (
                alu64(AluOp::Add, R2, Imm(-4)),
                "r2 += -4",
                &["07020000fcffffff"],
            ),
            (
                Insn::Neg {
                    width: Width::W32,
                    dst: R0,
                },
                "w0 = -w0",
                &["8400000000000000"],
            ),
            // BPF_ENDIAN(BPF_TO_BE, BPF_REG_0, 16)
            (
                Insn::Endian {
                    to: Endian::Be,
                    bits: 16,
                    dst: R0,
                },
                "r0 = be16 r0",
                &["dc00000010000000"],
            ),
            // BPF_LD_ABS(BPF_H, 12)
            (
                Insn::LoadAbs {
                    size: Size::H,
                    offset: 12,
                },
                "r0 = *(u16 *)skb[12]",
                &["280000000c000000"],
            ),
            // BPF_LD_IND(BPF_B, BPF_REG_7, 14)
            (
                Insn::LoadInd {
                    size: Size::B,
                    src: R7,
                    offset: 14,
                },
                "r0 = *(u8 *)skb[r7 + 14]",
                &["507000000e000000"],
            ),
            // BPF_LDX_MEM(BPF_W, BPF_REG_0, BPF_REG_6, 0)
            (
                load(Size::W, R0, R6, 0),
                "r0 = *(u32 *)(r6 + 0)",
                &["6160000000000000"],
            ),
            // BPF_STX_MEM(BPF_DW, BPF_REG_0, BPF_REG_1, 8)
            (
                store(Size::DW, R0, 8, R(R1)),
                "*(u64 *)(r0 + 8) = r1",
                &["7b10080000000000"],
            ),
            // BPF_ST_MEM(BPF_W, BPF_REG_10, -4, 3)
            (
                store(Size::W, R10, -4, Imm(3)),
                "*(u32 *)(r10 - 4) = 3",
                &["620afcff03000000"],
            ),
            // BPF_JMP_A(2)
            (
                Insn::Jump {
                    target: Target::Offset(2),
                },
                "goto +2",
                &["0500020000000000"],
            ),
            // BPF_JMP32_IMM(BPF_JEQ, BPF_REG_0, 0x800, 3)
            (
                Insn::Branch {
                    width: Width::W32,
                    op: JmpOp::Eq,
                    dst: R0,
                    src: Imm(0x800),
                    target: Target::Offset(3),
                },
                "if w0 == 0x800 goto +3",
                &["1600030000080000"],
            ),
            // BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, 1)
            (
                Insn::Branch {
                    width: Width::W64,
                    op: JmpOp::Eq,
                    dst: R0,
                    src: Imm(0),
                    target: Target::Offset(1),
                },
                "if r0 == 0 goto +1",
                &["1500010000000000"],
            ),
            // BPF_JMP32_REG(BPF_JGT, BPF_REG_0, BPF_REG_7, -1)
            (
                Insn::Branch {
                    width: Width::W32,
                    op: JmpOp::Gt,
                    dst: R0,
                    src: R(R7),
                    target: Target::Offset(-1),
                },
                "if w0 > w7 goto -1",
                &["2e70ffff00000000"],
            ),
            // BPF_EMIT_CALL(BPF_FUNC_map_lookup_elem)
            (
                Insn::Call(Helper::MapLookupElem),
                "call bpf_map_lookup_elem#1",
                &["8500000001000000"],
            ),
            (Insn::Exit, "exit", &["9500000000000000"]),
            // BPF_JMP | BPF_JCOND | BPF_K, src BPF_MAY_GOTO (0)
            (
                Insn::MayGoto {
                    target: Target::Offset(5),
                },
                "may_goto +5",
                &["e500050000000000"],
            ),
            // BPF_LD_MAP_FD(BPF_REG_1, 5), the reference bound to fd 5
            (
                Insn::LoadMap {
                    dst: R1,
                    map: MapRef::Counters(0),
                },
                "r1 = map[counters]",
                &["1811000005000000", "0000000000000000"],
            ),
            // BPF_LD_IMM64(BPF_REG_2, 0x1_0000_0002)
            (
                Insn::LoadImm64 {
                    dst: R2,
                    imm: 0x1_0000_0002,
                },
                "r2 = 0x100000002 ll",
                &["1802000002000000", "0000000001000000"],
            ),
        ];
        for (insn, text, bytes) in table {
            assert_eq!(insn.to_string(), *text, "display of {insn:?}");
            assert_eq!(hex(*insn), *bytes, "encoding of `{text}`");
            assert_eq!(insn.slots(), bytes.len(), "slots of `{text}`");
        }
    }

    #[test]
    fn a_jump_to_a_label_does_not_encode() {
        let err = goto(Label::Accept(0))
            .encode(|_| Some(FD), &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            err,
            EncodeError::UnresolvedJump {
                insn: goto(Label::Accept(0)),
                label: Label::Accept(0)
            }
        );
        assert!(err.to_string().contains("goto accept"), "{err}");
    }

    #[test]
    fn map_references_print_by_name_and_encode_only_when_bound() {
        let table = [
            (MapRef::Counters(0), "r2 = map[counters]"),
            (MapRef::Counters(7), "r2 = map[counters7]"),
            (MapRef::Dispatch, "r2 = map[dispatch]"),
            (MapRef::CounterTable, "r2 = map[table]"),
            (MapRef::ProgArray, "r2 = map[chain]"),
        ];
        for (map, text) in table {
            let insn = Insn::LoadMap { dst: R2, map };
            assert_eq!(insn.to_string(), text);
            assert_eq!(insn.map(), Some(map));
            // Bound: the fd of the map it is bound to, and nothing of the others'.
            let mut out = Vec::new();
            insn.encode(|m| (m == map).then_some(9), &mut out).unwrap();
            assert_eq!(out[0][1], 0x12, "r2, BPF_PSEUDO_MAP_FD: `{text}`");
            assert_eq!(out[0][4..8], 9i32.to_le_bytes(), "`{text}`");
            // Unbound: nothing appended, and the error names the reference.
            let mut out = Vec::new();
            let err = insn
                .encode(|m| (m != map).then_some(9), &mut out)
                .unwrap_err();
            assert_eq!(err, EncodeError::UnboundMap { insn, map });
            assert!(err.to_string().contains(&format!("map {map}")), "{err}");
            assert!(out.is_empty(), "`{text}`: {out:?}");
        }
    }

    #[test]
    fn a_map_values_address_encodes_the_value_form_and_its_offset() {
        let insn = Insn::LoadMapValue {
            dst: R5,
            map: MapRef::Presence,
            offset: 24,
        };
        assert_eq!(insn.to_string(), "r5 = &map[presence].value[24]");
        assert_eq!((insn.map(), insn.slots()), (Some(MapRef::Presence), 2));
        let mut out = Vec::new();
        insn.encode(|_| Some(9), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0][0], 0x18, "BPF_LD | BPF_DW | BPF_IMM");
        assert_eq!(out[0][1], 0x25, "r5, BPF_PSEUDO_MAP_VALUE");
        assert_eq!(out[0][4..8], 9i32.to_le_bytes(), "the map's fd");
        assert_eq!(
            out[1][4..8],
            24i32.to_le_bytes(),
            "the offset, in the second slot"
        );
        let err = insn.encode(|_| None, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err,
            EncodeError::UnboundMap {
                insn,
                map: MapRef::Presence
            }
        );
    }

    #[test]
    fn every_comparison_but_set_has_a_negation_that_negates_back() {
        use JmpOp::*;
        for op in [Eq, Gt, Ge, Ne, Sgt, Sge, Lt, Le, Slt, Sle] {
            assert_eq!(op.negate().and_then(JmpOp::negate), Some(op));
        }
        assert_eq!(Set.negate(), None);
    }
}
