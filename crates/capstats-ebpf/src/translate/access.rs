//! How each hook reads what a classic program asks for: packet bytes, the packet's
//! length, socket metadata, and the frame length it counts.
//!
//! - Socket filters and TC: `LD_ABS`/`LD_IND` (an out-of-bounds load ends the program
//!   with "no match", as in classic BPF) and `__sk_buff` fields.
//! - XDP: direct packet access, bounds-checked against `data_end` the way the verifier
//!   wants; a load beyond the first buffer of a multi-buffer frame (or further than
//!   direct access reaches) goes through `bpf_xdp_load_bytes`, and a failed load
//!   rejects. The length is `bpf_xdp_get_buff_len` (every buffer). XDP runs before
//!   the kernel takes VLAN tags out of the frame, so it has no tag metadata, and no
//!   packet type or socket fields: filters that read them are refused.

use super::{A, CTX, FP, Hook, TranslateError, Translator, X, imm};
use crate::cbpf::{Ancillary, ClassicInsn, LoadA, Program};
use crate::insn::build::*;
use crate::insn::{AluOp, Endian, Helper, Insn, JmpOp, Operand, Reg, Size, Width};

/// Socket and TC hooks: scratch for `ldx msh` and the indexed-load guard.
const TMP: Reg = Reg::R8;
/// XDP: the frame's first byte, and one past the first buffer's end.
const DATA: Reg = Reg::R8;
const DATA_END: Reg = Reg::R9;
/// XDP: where A waits while a helper runs, and where `bpf_xdp_load_bytes` writes.
const SPILL_OFFSET: i16 = -72;
const BUFFER_OFFSET: i16 = -80;
/// XDP: offsets up to here are tried with direct access first (the verifier bounds
/// packet pointer offsets); further ones use the helper.
const DIRECT_LIMIT: u32 = 0x8000;

/// `PACKET_OUTGOING` (include/uapi/linux/if_packet.h).
const PACKET_OUTGOING: i32 = 4;

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

/// Field offsets in `struct xdp_md`.
mod xdp_md {
    pub const DATA: i16 = 0;
    pub const DATA_END: i16 = 4;
    pub const INGRESS_IFINDEX: i16 = 12;
    pub const RX_QUEUE_INDEX: i16 = 16;
}

fn bytes(size: Size) -> u32 {
    match size {
        Size::B => 1,
        Size::H => 2,
        Size::W => 4,
        Size::DW => 8,
    }
}

/// Refuses programs that read what `hook` does not have.
pub(super) fn check(program: &Program, hook: Hook) -> Result<(), TranslateError> {
    if hook != Hook::Xdp {
        return Ok(());
    }
    for (pc, insn) in program.insns().iter().enumerate() {
        if let ClassicInsn::LoadA(LoadA::Ancillary { field, .. }) = insn {
            let what = match field {
                Ancillary::Ifindex
                | Ancillary::Queue
                | Ancillary::Cpu
                | Ancillary::Random
                | Ancillary::AluXorX => {
                    continue;
                }
                Ancillary::Protocol => "the skb protocol",
                Ancillary::PktType => "the packet type (inbound/outbound)",
                Ancillary::Mark => "the skb mark",
                Ancillary::RxHash => "the skb hash",
                Ancillary::VlanTag | Ancillary::VlanTagPresent | Ancillary::VlanTpid => {
                    "VLAN tag metadata (XDP sees tags in the frame)"
                }
            };
            return Err(TranslateError::Unsupported { pc, what, hook });
        }
    }
    Ok(())
}

impl Translator {
    pub(super) fn access_prologue(&mut self) {
        if self.hook == Hook::Xdp {
            self.emit(load(Size::W, DATA, CTX, xdp_md::DATA)); // data = ctx->data
            self.emit(load(Size::W, DATA_END, CTX, xdp_md::DATA_END)); // data_end = ctx->data_end
        }
    }

    /// `A = P[k:size]`, big endian.
    pub(super) fn load_abs(&mut self, size: Size, offset: u32) {
        if offset > i32::MAX as u32 {
            // Beyond any packet: libpcap's bounds check rejects.
            self.emit(goto(self.reject()));
        } else if self.hook.uses_ld_abs() {
            self.emit(Insn::LoadAbs {
                size,
                offset: offset as i32,
            }); // A = P[k]
        } else if offset + bytes(size) <= DIRECT_LIMIT {
            let (slow, done) = (self.local(), self.local());
            let (r1, r2) = (Reg::R1, Reg::R2);
            self.emit(mov64(r1, Operand::Reg(DATA))); // r1 = data + k
            self.emit(alu64(AluOp::Add, r1, imm(offset)));
            self.emit(mov64(r2, Operand::Reg(r1))); // r2 = past the bytes loaded
            self.emit(alu64(AluOp::Add, r2, imm(bytes(size))));
            self.emit(branch64(JmpOp::Gt, r2, Operand::Reg(DATA_END), slow)); // not in the first buffer
            self.emit(load(size, A, r1, 0)); // A = P[k], network order
            self.emit(goto(done));
            self.asm.label(slow);
            self.emit(mov32(r2, imm(offset))); // r2 = k
            self.load_bytes_helper(size);
            self.asm.label(done);
            self.network_to_host(size);
        } else {
            self.emit(mov32(Reg::R2, imm(offset))); // r2 = k
            self.load_bytes_helper(size);
            self.network_to_host(size);
        }
    }

    /// `A = P[X + k:size]`. libpcap rejects when `X + k` overflows 32 bits or lies past
    /// the packet; the kernel would wrap the sum and read negative offsets relative to
    /// the link or network header. The guard keeps libpcap's meaning, and is left out
    /// when X is known small enough that neither can happen.
    pub(super) fn load_ind(&mut self, size: Size, offset: u32, x_bound: u32) {
        if offset > i32::MAX as u32 {
            self.emit(goto(self.reject()));
            return;
        }
        let guarded = u64::from(x_bound) + u64::from(offset) > i32::MAX as u64;
        if self.hook.uses_ld_abs() {
            if self.loops {
                // See below: no branch on X in a loop. A saturated offset reads as -1,
                // which LD_IND finds nowhere: the program ends without a match.
                self.emit(mov64(TMP, Operand::Reg(X))); // TMP = X + k (< 2^33)
                self.emit(alu64(AluOp::Add, TMP, imm(offset)));
                self.saturate_past_2_31(TMP, Reg::R3);
                self.emit(Insn::LoadInd {
                    size,
                    src: TMP,
                    offset: 0,
                }); // A = P[TMP]
            } else if guarded {
                self.emit(mov64(TMP, Operand::Reg(X))); // TMP = X (zero-extended)
                self.emit(alu64(AluOp::Add, TMP, imm(offset))); // TMP = X + k, without wrapping
                self.emit(branch64(
                    JmpOp::Gt,
                    TMP,
                    Operand::Imm(i32::MAX),
                    self.reject(),
                )); // past any packet
                self.emit(Insn::LoadInd {
                    size,
                    src: TMP,
                    offset: 0,
                }); // A = P[TMP]
            } else {
                self.emit(Insn::LoadInd {
                    size,
                    src: X,
                    offset: offset as i32,
                }); // A = P[X + k]
            }
            return;
        }
        let (r1, r2, r3) = (Reg::R1, Reg::R2, Reg::R3);
        let (slow, done) = (self.local(), self.local());
        self.emit(mov64(r1, Operand::Reg(X))); // r1 = X + k, without wrapping
        self.emit(alu64(AluOp::Add, r1, imm(offset)));
        if guarded && !self.loops {
            self.emit(branch64(
                JmpOp::Gt,
                r1,
                Operand::Imm(i32::MAX),
                self.reject(),
            )); // past any packet
        }
        if self.loops {
            // In a loop X grows each round. Were it a packet offset, or compared in a
            // branch, the verifier would track every round's range and never see the
            // loop converge; the helper takes any offset, so X stays a plain number to
            // it, and the 2^31 guard is done without a branch: a larger X + k becomes
            // an offset no frame has, and the helper fails.
            self.emit(mov64(r2, Operand::Reg(r1))); // r2 = X + k (< 2^33)
            self.saturate_past_2_31(r2, r3);
            self.load_bytes_helper(size);
            self.network_to_host(size);
            return;
        }
        // Bounded for the verifier; further offsets take the helper.
        self.emit(branch64(
            JmpOp::Gt,
            r1,
            imm(DIRECT_LIMIT - bytes(size)),
            slow,
        ));
        self.emit(mov64(r2, Operand::Reg(DATA))); // r2 = data + X + k
        self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
        self.emit(mov64(r3, Operand::Reg(r2))); // r3 = past the bytes loaded
        self.emit(alu64(AluOp::Add, r3, imm(bytes(size))));
        self.emit(branch64(JmpOp::Gt, r3, Operand::Reg(DATA_END), slow)); // not in the first buffer
        self.emit(load(size, A, r2, 0)); // A = P[X + k], network order
        self.emit(goto(done));
        self.asm.label(slow);
        self.emit(mov64(r2, Operand::Reg(r1))); // r2 = X + k
        self.load_bytes_helper(size);
        self.asm.label(done);
        self.network_to_host(size);
    }

    /// `offset = offset < 2^31 ? offset : all ones`, without a branch (`offset` below
    /// 2^33; `scratch` clobbered): the verifier must not learn X's range from a guard.
    fn saturate_past_2_31(&mut self, offset: Reg, scratch: Reg) {
        self.emit(mov64(scratch, Operand::Reg(offset)));
        self.emit(alu64(AluOp::Rsh, scratch, Operand::Imm(31))); // 0, or 1..3 past 2^31
        self.emit(alu64(AluOp::Add, scratch, Operand::Imm(3)));
        self.emit(alu64(AluOp::Rsh, scratch, Operand::Imm(2))); // 0 or 1
        self.emit(Insn::Neg {
            width: Width::W64,
            dst: scratch,
        }); // 0 or all ones
        self.emit(alu64(AluOp::Or, offset, Operand::Reg(scratch))); // offset, or all ones
    }

    /// XDP: `A = P[r2:size]` in network order through `bpf_xdp_load_bytes`, which reads
    /// across buffers; out of bounds, the filter rejects.
    fn load_bytes_helper(&mut self, size: Size) {
        let (r1, r3, r4) = (Reg::R1, Reg::R3, Reg::R4);
        self.emit(mov64(r1, Operand::Reg(CTX))); // r1 = ctx
        self.emit(mov64(r3, Operand::Reg(FP))); // r3 = buffer
        self.emit(alu64(AluOp::Add, r3, Operand::Imm(BUFFER_OFFSET.into())));
        self.emit(mov32(r4, imm(bytes(size)))); // r4 = length
        self.emit(Insn::Call(Helper::XdpLoadBytes));
        self.emit(branch64(JmpOp::Slt, A, Operand::Imm(0), self.reject())); // past the frame
        self.emit(load(size, A, FP, BUFFER_OFFSET)); // A = the bytes, network order
    }

    fn network_to_host(&mut self, size: Size) {
        match size {
            Size::H => self.emit(Insn::Endian {
                to: Endian::Be,
                bits: 16,
                dst: A,
            }), // A = ntohs(A)
            Size::W => self.emit(Insn::Endian {
                to: Endian::Be,
                bits: 32,
                dst: A,
            }), // A = ntohl(A)
            Size::B | Size::DW => {}
        }
    }

    /// `dst = len` (A or X): the packet's length.
    pub(super) fn load_len(&mut self, dst: Reg) {
        if self.hook.uses_ld_abs() {
            self.emit(load(Size::W, dst, CTX, skb::LEN)); // dst = skb->len
            return;
        }
        if dst != A {
            self.emit(store(Size::W, FP, SPILL_OFFSET, Operand::Reg(A))); // keep A
        }
        self.emit(mov64(Reg::R1, Operand::Reg(CTX)));
        self.emit(Insn::Call(Helper::XdpGetBuffLen)); // r0 = every buffer's bytes
        if dst != A {
            self.emit(mov32(dst, Operand::Reg(A))); // dst = len
            self.emit(load(Size::W, A, FP, SPILL_OFFSET)); // A back
        }
    }

    /// `X = 4 * (P[k:1] & 0xf)`, A unchanged.
    pub(super) fn load_msh(&mut self, offset: u32) {
        if offset > i32::MAX as u32 {
            self.emit(goto(self.reject()));
            return;
        }
        if self.hook.uses_ld_abs() {
            self.emit(mov64(TMP, Operand::Reg(A))); // TMP = A
            self.emit(Insn::LoadAbs {
                size: Size::B,
                offset: offset as i32,
            }); // A = P[k:1]
        } else {
            self.emit(store(Size::W, FP, SPILL_OFFSET, Operand::Reg(A))); // keep A
            self.load_abs(Size::B, offset); // A = P[k:1]
        }
        self.emit(alu32(AluOp::And, A, Operand::Imm(0xf))); // A &= 0xf
        self.emit(alu32(AluOp::Lsh, A, Operand::Imm(2))); // A <<= 2
        self.emit(mov64(X, Operand::Reg(A))); // X = 4 * (P[k:1] & 0xf)
        if self.hook.uses_ld_abs() {
            self.emit(mov64(A, Operand::Reg(TMP))); // A = TMP
        } else {
            self.emit(load(Size::W, A, FP, SPILL_OFFSET)); // A back
        }
    }

    pub(super) fn ancillary(&mut self, field: Ancillary) {
        let skb_u32 = |t: &mut Self, offset: i16| t.emit(load(Size::W, A, CTX, offset));
        match (field, self.hook) {
            (Ancillary::Cpu, _) => self.emit(Insn::Call(Helper::GetSmpProcessorId)), // A = cpu
            (Ancillary::Random, _) => self.emit(Insn::Call(Helper::GetPrandomU32)),  // A = random
            (Ancillary::AluXorX, _) => self.emit(alu32(AluOp::Xor, A, Operand::Reg(X))), // A ^= X
            (Ancillary::Ifindex, Hook::Xdp) => skb_u32(self, xdp_md::INGRESS_IFINDEX), // A = ctx->ingress_ifindex
            (Ancillary::Queue, Hook::Xdp) => skb_u32(self, xdp_md::RX_QUEUE_INDEX), // A = ctx->rx_queue_index
            (_, Hook::Xdp) => unreachable!("check() refuses {field:?} for XDP"),
            (Ancillary::Protocol, _) => {
                skb_u32(self, skb::PROTOCOL); // A = skb->protocol (network order)
                self.emit(Insn::Endian {
                    to: Endian::Be,
                    bits: 16,
                    dst: A,
                }); // A = ntohs(A)
            }
            (Ancillary::PktType, _) if self.outgoing => {
                self.emit(mov32(A, Operand::Imm(PACKET_OUTGOING))); // A = PACKET_OUTGOING
            }
            (Ancillary::PktType, _) => skb_u32(self, skb::PKT_TYPE), // A = skb->pkt_type
            (Ancillary::Ifindex, _) => skb_u32(self, skb::IFINDEX),  // A = skb->dev->ifindex
            (Ancillary::Mark, _) => skb_u32(self, skb::MARK),        // A = skb->mark
            (Ancillary::Queue, _) => skb_u32(self, skb::QUEUE_MAPPING), // A = skb->queue_mapping
            (Ancillary::RxHash, _) => skb_u32(self, skb::HASH),      // A = skb->hash
            (Ancillary::VlanTag, _) => skb_u32(self, skb::VLAN_TCI), // A = skb->vlan_tci
            (Ancillary::VlanTagPresent, _) => skb_u32(self, skb::VLAN_PRESENT), // A = tag present
            (Ancillary::VlanTpid, _) => {
                skb_u32(self, skb::VLAN_PROTO); // A = skb->vlan_proto (network order)
                self.emit(Insn::Endian {
                    to: Endian::Be,
                    bits: 16,
                    dst: A,
                }); // A = ntohs(A)
            }
        }
    }

    /// `*(u64 *)(value + offset) += the frame's length on the wire`. Clobbers r0-r5
    /// and X (dead here: every filter sets X before reading it).
    pub(super) fn add_frame_length(&mut self, value: Reg, offset: i16) {
        let (r1, r2, r3) = (Reg::R1, Reg::R2, Reg::R3);
        if self.hook.uses_ld_abs() {
            // skb->len, plus the 4 bytes of a VLAN tag the kernel moved out of the frame
            // into metadata (tcpdump puts it back).
            self.emit(load(Size::W, r1, CTX, skb::LEN));
            self.emit(load(Size::W, r3, CTX, skb::VLAN_PRESENT));
            self.emit(alu64(AluOp::Lsh, r3, Operand::Imm(2)));
            self.emit(alu64(AluOp::Add, r1, Operand::Reg(r3)));
            self.emit(load(Size::DW, r2, value, offset));
            self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
            self.emit(store(Size::DW, value, offset, Operand::Reg(r2)));
        } else {
            self.emit(mov64(X, Operand::Reg(value))); // keep the value across the call
            self.emit(mov64(r1, Operand::Reg(CTX)));
            self.emit(Insn::Call(Helper::XdpGetBuffLen)); // r0 = every buffer's bytes
            self.emit(load(Size::DW, r1, X, offset));
            self.emit(alu64(AluOp::Add, r1, Operand::Reg(Reg::R0)));
            self.emit(store(Size::DW, X, offset, Operand::Reg(r1)));
        }
    }
}
