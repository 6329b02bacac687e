//! Classic BPF → eBPF counting program.
//!
//! One explicit case per classic instruction, in the manner of the kernel's
//! `bpf_convert_filter()`, with fixed register roles:
//!
//! | role     | register | why |
//! |----------|----------|-----|
//! | A        | `r0`     | helpers leave their result there |
//! | X        | `r7`     | callee-saved: survives helper calls |
//! | CTX      | `r6`     | the context, for helpers and `__sk_buff` fields |
//! | data_end | `r9`     | XDP and TC: one past the directly readable bytes (their start is read from the context at each load) |
//! | cached   | `r9`     | socket filters: bytes of the packet copied to the stack |
//! | FP       | `r10`    | the frame ([`frame`]): `M[k]`, the map key, the wire length |
//!
//! How packet bytes, the length and socket metadata are read depends on the hook
//! ([`access`]): direct packet access with bounds checks for XDP and TC, a stack copy
//! of the packet's first bytes for socket filters (which may not read packet memory),
//! and a load helper for bytes beyond either. No `LD_ABS`: its failure would end the
//! program, and a program holds many filters.
//!
//! Every accepting return jumps to the filter's counting code, which adds one packet and
//! its length (for skb hooks `skb->len`, plus 4 for a VLAN tag the kernel took out of
//! the frame, as tcpdump shows it; computed once per packet) to its slot of a per-CPU
//! array map, or, for a filter counting [`Count::Wire`], the frames a GRO/GSO packet
//! was on the wire and their bytes (computed once per packet too);
//! every rejecting return jumps past it. A program can hold several filters, one after
//! another, each counting into its own slot; it ends in the hook's neutral return
//! value, so it never changes what happens to the packet.
//!
//! Translation touches no kernel object: the program names the maps it reads by
//! [`MapRef`] (`r1 = map[counters]`), and its loader binds them to live maps
//! ([`crate::program::MapBinding`]).
//!
//! Where the kernel's eBPF and libpcap's interpreter would disagree on a classic
//! program, the generated code follows libpcap (`bpf_filter.c`): an indexed load whose
//! offset overflows or exceeds 2^31 rejects, division or modulo by X = 0 rejects, a
//! shift by X ≥ 32 gives 0.

mod access;
mod frame;
mod shared;
#[cfg(test)]
mod tests;

use crate::asm::{AsmError, Assembler};
use crate::cbpf::{AluOp as ClassicAlu, ClassicInsn, Cond, LoadA, LoadSize, LoadX, Program, Src};
use crate::insn::build::*;
use crate::insn::{AluOp, Insn, JmpOp, Label, MapRef, Operand, Reg, Size, Target, Width};
use crate::shared::plan::{Item, Plan};

const A: Reg = Reg::R0;
const X: Reg = Reg::R7;
const CTX: Reg = Reg::R6;
const FP: Reg = Reg::R10;

/// Where a translation runs: its program type, and at TC egress that every packet
/// is one going out (see [`translate`]).
pub use capstats_common::Hook;

/// What the program returns whether or not it counted: 0 for a socket filter (nothing
/// is queued to user space), `TC_ACT_UNSPEC` at TC (the packet continues down the
/// chain untouched), `XDP_PASS` (the frame goes on to the stack).
pub const fn neutral_return(hook: Hook) -> i32 {
    match hook {
        Hook::Socket => 0,
        Hook::TcIngress | Hook::TcEgress => -1,
        Hook::Xdp => 2,
    }
}

/// A program for `hook` that does nothing: `r0 = ` the [`neutral_return`]; `exit`. The
/// floor a hook's programs are measured against, and the probe of a test run's limits.
pub fn empty_program(hook: Hook) -> [Insn; 2] {
    [
        mov64(Reg::R0, Operand::Imm(neutral_return(hook))),
        Insn::Exit,
    ]
}

/// What a filter counts per packet it matches: a session's `packets` option.
///
/// An skb the kernel has merged (GRO, on receive) or not yet split (GSO/TSO, on
/// transmit) stands for several frames on the wire, carrying one set of headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Count {
    /// The packet as the stack holds it, as tcpdump shows it: one packet, `skb->len`
    /// bytes (plus a VLAN tag put back). Today's counting, instruction for instruction.
    #[default]
    Stack,
    /// The frames it was (or will be) on the wire: `max(gso_segs, 1)` packets, and
    /// `skb->len` plus one more set of headers (link, IPv4/IPv6 and TCP/UDP, parsed from
    /// the packet) per segment after the first. XDP counts wire frames either way.
    Wire,
}

impl Count {
    pub const fn name(self) -> &'static str {
        match self {
            Count::Stack => "stack",
            Count::Wire => "wire",
        }
    }
}

/// Where matches are counted: slot `slot` of the program's counter map `map` (the
/// reference [`MapRef::Counters`]`(map)`, a per-CPU array map whose values are
/// [`crate::counters::Counter`]s once bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSlot {
    pub map: u32,
    pub slot: u32,
}

impl CounterSlot {
    /// The reference the counting code loads.
    pub const fn map_ref(self) -> MapRef {
        MapRef::Counters(self.map)
    }
}

/// The program a chained program hands the packet to after its own filters
/// (`bpf_tail_call`): entry `index` of the chain's `BPF_MAP_TYPE_PROG_ARRAY`, the
/// reference [`MapRef::ProgArray`] (see [`crate::chain`]). An empty entry, or the
/// kernel's limit of tail calls, makes the call fall through to the hook's neutral
/// return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailCall {
    pub index: u32,
}

/// Where a shared program runs and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub hook: Hook,
    /// A socket filter on `interface any`: the cooked header's length (see
    /// [`translate_all_cooked`]).
    pub cooked: Option<u32>,
    /// The next program of a chain (see [`translate_chained`]).
    pub next: Option<TailCall>,
}

impl Placement {
    /// `hook`, with nothing after it.
    pub const fn on(hook: Hook) -> Self {
        Self {
            hook,
            cooked: None,
            next: None,
        }
    }
}

/// The references by which a shared program reads its maps ([`crate::shared::maps`]);
/// [`SharedMaps::default`] is [`MapRef::Dispatch`], [`MapRef::Presence`] and
/// [`MapRef::CounterTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedMaps {
    /// The dispatch map (`BPF_MAP_TYPE_HASH`, [`crate::shared::maps::DispatchKey`] → table entry).
    pub dispatch: MapRef,
    /// The dispatch map's presence filter (see [`crate::shared::presence`]).
    pub presence: MapRef,
    /// The counter table (`BPF_MAP_TYPE_ARRAY_OF_MAPS`, entry → counter map).
    pub table: MapRef,
}

impl Default for SharedMaps {
    fn default() -> Self {
        Self {
            dispatch: MapRef::Dispatch,
            presence: MapRef::Presence,
            table: MapRef::CounterTable,
        }
    }
}

/// Why filters could not be translated for a hook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(transparent)]
    Asm(#[from] AsmError),
    #[error("instruction {pc} reads {what}, which the {hook} hook does not have")]
    Unsupported {
        pc: usize,
        what: &'static str,
        hook: Hook,
    },
}

/// Translates a validated classic program into an eBPF program for `hook` that counts
/// its matches into `counter`.
///
/// The TC egress program differs in one thing: a packet going out has the type
/// `PACKET_OUTGOING` (4), as a packet socket sees it (`outbound`), but at TC egress
/// `skb->pkt_type` still says `PACKET_HOST`, so the type is that constant.
pub fn translate(
    program: &Program,
    hook: Hook,
    counter: CounterSlot,
) -> Result<Vec<Insn>, TranslateError> {
    translate_all(&[(program, counter)], hook)
}

/// Translates several filters into one program: each runs on every packet and counts
/// its matches into its own counter slot (of its own map, or of a shared one). The
/// kernel allows a program 64 maps: more sessions take a chain ([`crate::chain`]).
pub fn translate_all(
    filters: &[(&Program, CounterSlot)],
    hook: Hook,
) -> Result<Vec<Insn>, TranslateError> {
    Ok(assemble(filters, hook, None)?.finish()?)
}

/// One program of a chain ([`crate::chain`]): [`translate_all`], then, before the hook's neutral return,
/// a tail call to `next` if given. Each program of a chain has the hook's whole
/// prologue: a tail call keeps only the context, not the registers or the stack.
pub fn translate_chained(
    filters: &[(&Program, CounterSlot)],
    hook: Hook,
    next: Option<TailCall>,
) -> Result<Vec<Insn>, TranslateError> {
    Ok(assemble(filters, hook, next)?.finish()?)
}

/// [`translate_all`] for a socket filter on an unbound `SOCK_DGRAM` packet socket
/// (`interface any`): the packet starts at its network header, and the frame tcpdump
/// records is a Linux cooked header of `header_len` bytes before it, with no VLAN tag
/// put back (`LINKTYPE_LINUX_SLL2`). Counts `skb->len + header_len` bytes per packet.
pub fn translate_all_cooked(
    filters: &[(&Program, CounterSlot)],
    header_len: u32,
) -> Result<Vec<Insn>, TranslateError> {
    Ok(assemble_with(filters, Hook::Socket, None, Some(header_len))?.finish()?)
}

/// The same translation as assembly text with its labels (see [`Assembler::listing`]).
pub fn translate_listing(
    program: &Program,
    hook: Hook,
    counter: CounterSlot,
) -> Result<String, TranslateError> {
    Ok(assemble(&[(program, counter)], hook, None)?.listing()?)
}

/// Translates `filters` as `plan` groups them ([`crate::shared`]): each group's code
/// once, each single filter alone, every filter counting into its counter map through
/// the table, filter `i` at entry `entries[i]` (a single's entry is in its code; a
/// group member's in the dispatch map), for `placement`.
pub fn translate_shared(
    filters: &[&Program],
    entries: &[u32],
    plan: &Plan,
    placement: Placement,
    maps: SharedMaps,
) -> Result<Vec<Insn>, TranslateError> {
    Ok(assemble_shared(filters, entries, plan, placement, maps)?.finish()?)
}

/// [`translate_shared`] as assembly text with its labels.
pub fn translate_shared_listing(
    filters: &[&Program],
    entries: &[u32],
    plan: &Plan,
    placement: Placement,
    maps: SharedMaps,
) -> Result<String, TranslateError> {
    Ok(assemble_shared(filters, entries, plan, placement, maps)?.listing()?)
}

fn assemble_shared(
    filters: &[&Program],
    entries: &[u32],
    plan: &Plan,
    placement: Placement,
    maps: SharedMaps,
) -> Result<Assembler, TranslateError> {
    let Placement { hook, cooked, next } = placement;
    for program in filters {
        access::check(program, hook)?;
    }
    let mut t = Translator::new(hook, maps.table, plan.items.len());
    t.cooked = cooked;
    t.wire_any = plan.counts.contains(&Count::Wire);
    t.prologue();
    let mut group_number = 0u16;
    for (item_number, item) in plan.items.iter().enumerate() {
        t.filter = item_number;
        match item {
            Item::Single(filter) => {
                let program = filters[*filter];
                t.wire = plan.count(*filter) == Count::Wire;
                t.loops = program.has_loops();
                t.filter_block(program);
                t.asm.label(Label::Accept(item_number));
                t.emit(store(Size::DW, FP, frame::ENTRY, imm(entries[*filter]))); // entry = this filter's
                t.count_entry(Label::Reject(item_number));
            }
            Item::Group(group) => {
                // One count for all: the planner groups filters of one count only.
                t.wire = plan.count(group.members[0]) == Count::Wire;
                t.loops = false;
                let program = filters[group.members[0]];
                t.group_block(group_number, program, &group.template, maps);
                group_number += 1;
            }
        }
        t.asm.label(Label::Reject(item_number));
    }
    t.epilogue(next);
    Ok(t.asm)
}

fn assemble(
    filters: &[(&Program, CounterSlot)],
    hook: Hook,
    next: Option<TailCall>,
) -> Result<Assembler, TranslateError> {
    assemble_with(filters, hook, next, None)
}

fn assemble_with(
    filters: &[(&Program, CounterSlot)],
    hook: Hook,
    next: Option<TailCall>,
    cooked: Option<u32>,
) -> Result<Assembler, TranslateError> {
    for (program, _) in filters {
        access::check(program, hook)?;
    }
    let mut t = Translator::new(hook, MapRef::CounterTable, filters.len());
    t.cooked = cooked;
    t.prologue();
    for (filter, (program, counter)) in filters.iter().enumerate() {
        t.filter = filter;
        t.loops = program.has_loops();
        t.filter_block(program);
        t.asm.label(Label::Accept(filter));
        t.count(*counter);
        t.asm.label(Label::Reject(filter));
    }
    t.epilogue(next);
    Ok(t.asm)
}

struct Translator {
    asm: Assembler,
    /// At [`Hook::TcEgress`] every packet is `PACKET_OUTGOING` (see [`translate`]).
    hook: Hook,
    /// Socket filters on `any`: the cooked header's length (see
    /// [`translate_all_cooked`]).
    cooked: Option<u32>,
    /// The filter being translated: its labels are its own.
    filter: usize,
    /// Whether that filter loops (a backward `ja`).
    loops: bool,
    next_local: usize,
    /// The label number of the next copy of a group's branch (after every item's).
    next_branch: usize,
    /// The counter table of a shared program (unused in others, which count into
    /// counter maps directly).
    table: MapRef,
    /// Some filter counts [`Count::Wire`]: the prologue computes the wire frames.
    wire_any: bool,
    /// The filter (or group) being counted counts [`Count::Wire`].
    wire: bool,
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
    fn new(hook: Hook, table: MapRef, items: usize) -> Self {
        Translator {
            asm: Assembler::new(),
            hook,
            cooked: None,
            filter: 0,
            loops: false,
            next_local: 0,
            next_branch: items,
            table,
            wire_any: false,
            wire: false,
        }
    }

    /// After the last filter: on to the next program of a chain, if any, else the
    /// hook's neutral return.
    fn epilogue(&mut self, next: Option<TailCall>) {
        if let Some(next) = next {
            self.tail_call(next);
        }
        self.emit(mov64(A, Operand::Imm(neutral_return(self.hook)))); // the hook's "carry on"
        self.emit(Insn::Exit);
    }

    fn emit(&mut self, insn: Insn) {
        self.asm.push(insn);
    }

    fn local(&mut self) -> Label {
        self.next_local += 1;
        Label::Local(self.next_local - 1)
    }

    fn accept(&self) -> Label {
        Label::Accept(self.filter)
    }

    fn reject(&self) -> Label {
        Label::Reject(self.filter)
    }

    fn classic(&self, pc: usize) -> Label {
        Label::Classic {
            filter: self.filter,
            pc,
        }
    }

    fn prologue(&mut self) {
        self.emit(mov64(CTX, Operand::Reg(Reg::R1))); // CTX = the context
        self.access_prologue();
    }

    /// One filter: A and X start at 0, as in a classic program of its own.
    fn filter_block(&mut self, program: &Program) {
        self.access_filter_start();
        self.emit(mov32(A, Operand::Imm(0))); // A = 0
        self.emit(mov32(X, Operand::Imm(0))); // X = 0
        let x_bounds = x_upper_bounds(program);
        for (pc, insn) in program.insns().iter().enumerate() {
            self.asm.label(self.classic(pc));
            self.insn(pc, *insn, x_bounds[pc]);
        }
    }

    /// One classic instruction. `x_bound` is the largest value X can hold here.
    fn insn(&mut self, pc: usize, insn: ClassicInsn, x_bound: u32) {
        let to = |t: &Self, skip: i64| t.classic((pc as i64 + 1 + skip) as usize);
        match insn {
            ClassicInsn::LoadA(LoadA::Abs { size: s, offset }) => self.load_abs(size(s), offset),
            ClassicInsn::LoadA(LoadA::Ind { size: s, offset }) => {
                self.load_ind(size(s), offset, x_bound)
            }
            ClassicInsn::LoadA(LoadA::Len) => self.load_len(A),
            ClassicInsn::LoadA(LoadA::Imm(k)) => self.emit(mov32(A, imm(k))), // A = k
            ClassicInsn::LoadA(LoadA::Mem(m)) => self.emit(load(Size::W, A, FP, frame::scratch(m))), // A = M[k]
            ClassicInsn::LoadA(LoadA::Ancillary { field, .. }) => self.ancillary(field),
            ClassicInsn::LoadX(LoadX::Imm(k)) => self.emit(mov32(X, imm(k))), // X = k
            ClassicInsn::LoadX(LoadX::Len) => self.load_len(X),
            ClassicInsn::LoadX(LoadX::Mem(m)) => self.emit(load(Size::W, X, FP, frame::scratch(m))), // X = M[k]
            ClassicInsn::LoadX(LoadX::Msh(k)) => self.load_msh(k),
            ClassicInsn::StoreA(m) => {
                self.emit(store(Size::DW, FP, frame::scratch(m), Operand::Reg(A)))
            } // M[k] = A
            ClassicInsn::StoreX(m) => {
                self.emit(store(Size::DW, FP, frame::scratch(m), Operand::Reg(X)))
            } // M[k] = X
            ClassicInsn::Alu(op, src) => self.alu(op, src),
            ClassicInsn::Neg => self.emit(Insn::Neg {
                width: Width::W32,
                dst: A,
            }), // A = -A
            ClassicInsn::Ja(k) if k < 0 => {
                // A loop (protochain). libpcap's interpreter would spin for as long as the
                // packet makes it; the kernel gives up after its loop budget (millions of
                // rounds, far beyond any packet's extension headers), with no match.
                let reject = self.reject();
                self.emit(Insn::MayGoto {
                    target: Target::Label(reject),
                });
                self.emit(goto(to(self, k.into())));
            }
            ClassicInsn::Ja(k) => self.emit(goto(to(self, k.into()))),
            ClassicInsn::Jump { cond, src, jt, jf } => {
                let (on_true, on_false) = (to(self, jt.into()), to(self, jf.into()));
                self.jump(cond, src, on_true, on_false, jt, jf)
            }
            ClassicInsn::RetK(0) => self.emit(goto(self.reject())),
            ClassicInsn::RetK(_) => self.emit(goto(self.accept())),
            ClassicInsn::RetA => {
                self.emit(branch32(JmpOp::Ne, A, Operand::Imm(0), self.accept())); // A != 0: match
                self.emit(goto(self.reject()));
            }
            ClassicInsn::Tax => self.emit(mov32(X, Operand::Reg(A))), // X = A
            ClassicInsn::Txa => self.emit(mov32(A, Operand::Reg(X))), // A = X
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
                self.emit(branch32(JmpOp::Eq, X, Operand::Imm(0), self.reject()));
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

    /// The filter matched: one more packet and its bytes in its counter slot. Falls
    /// through to the filter's reject label (the next filter, or the return).
    fn count(&mut self, counter: CounterSlot) {
        let (r0, r1) = (Reg::R0, Reg::R1);
        self.emit(Insn::LoadMap {
            dst: r1,
            map: counter.map_ref(),
        }); // r1 = counters
        self.lookup(counter.slot); // r0 = &counters[slot] on this CPU
        self.add_one(r0);
    }

    /// One packet and its bytes added to the counter at `counter`.
    fn add_one(&mut self, counter: Reg) {
        let (r0, r1) = (counter, Reg::R1);
        if self.wire && self.hook != Hook::Xdp {
            self.add_wire_frames(r0);
            return;
        }
        // Per-CPU values, and a CPU runs one hook invocation at a time: plain adds.
        self.emit(load(Size::DW, r1, r0, 0)); // packets += 1
        self.emit(alu64(AluOp::Add, r1, Operand::Imm(1)));
        self.emit(store(Size::DW, r0, 0, Operand::Reg(r1)));
        self.add_frame_length(r0, 8); // bytes += the frame's length
    }

    /// `bpf_tail_call(ctx, chain, index)`: does not return when the entry holds a
    /// program; falls through otherwise.
    fn tail_call(&mut self, next: TailCall) {
        self.emit(mov64(Reg::R1, Operand::Reg(CTX))); // r1 = the context
        self.emit(Insn::LoadMap {
            dst: Reg::R2,
            map: MapRef::ProgArray,
        }); // r2 = the chain
        self.emit(mov32(Reg::R3, imm(next.index))); // r3 = the next program's entry
        self.emit(Insn::Call(crate::insn::Helper::TailCall)); // on to it, if it is there
    }

    /// `r0 = bpf_map_lookup_elem(r1, &key)`; on no element the filter counts nothing.
    fn lookup(&mut self, key: u32) {
        let r2 = Reg::R2;
        self.emit(store(Size::DW, FP, frame::KEY, imm(key))); // key
        self.emit(mov64(r2, Operand::Reg(FP))); // r2 = &key
        self.emit(alu64(AluOp::Add, r2, Operand::Imm(frame::KEY.into())));
        self.emit(Insn::Call(crate::insn::Helper::MapLookupElem)); // r0 = the element
        self.emit(branch64(JmpOp::Eq, Reg::R0, Operand::Imm(0), self.reject()));
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
