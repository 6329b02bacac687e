//! How each hook reads what a classic program asks for: packet bytes, the packet's
//! length, socket metadata, and the frame length it counts.
//!
//! No hook uses `LD_ABS`/`LD_IND`. An out-of-bounds `LD_ABS` ends the whole program,
//! and a program holds every session of an interface, so one filter's failed load must
//! reject that filter only; and each of them is a helper call (~9 ns here) where a
//! direct read costs about one.
//! - XDP and TC: direct packet access (`data`..`data_end`: XDP's first buffer, the
//!   skb's linear part), bounds-checked the way the verifier wants; bytes beyond go
//!   through `bpf_xdp_load_bytes` / `bpf_skb_load_bytes`, and a failed load rejects.
//! - Socket filters may not read packet memory directly: the prologue copies the
//!   packet's first [`CACHE_BYTES`] (all of it, if shorter) to the stack with one
//!   `bpf_skb_load_bytes`; loads read that copy, and bytes past it take the helper.
//!
//! The length counted (the frame on the wire) is computed once per packet, in the
//! prologue. XDP runs before the kernel takes VLAN tags out of the frame, so it has no
//! tag metadata, and no packet type or socket fields: filters that read them are
//! refused.

use super::frame::{self, CACHE_BYTES};
use super::{A, CTX, FP, Hook, TranslateError, Translator, X, imm};
use crate::cbpf::{Ancillary, ClassicInsn, LoadA, Program};
use crate::insn::build::*;
use crate::insn::{AluOp, Endian, Helper, Insn, JmpOp, Operand, Reg, Size, Width};

/// XDP and TC: one past the packet's directly readable bytes.
const DATA_END: Reg = Reg::R9;
/// Socket filters: how many of the packet's first bytes the stack copy holds.
const CACHED: Reg = Reg::R9;

/// XDP and TC: offsets up to here are tried with direct access first (the verifier
/// bounds packet pointer offsets); further ones use the helper.
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
    pub const DATA: i16 = 76;
    pub const DATA_END: i16 = 80;
    pub const GSO_SEGS: i16 = 164;
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
        match self.hook {
            Hook::Xdp => {
                self.emit(mov64(Reg::R1, Operand::Reg(CTX)));
                self.emit(Insn::Call(Helper::XdpGetBuffLen)); // r0 = every buffer's bytes
                self.emit(store(Size::DW, FP, frame::WIRE_LEN, Operand::Reg(A))); // wire_len = r0
                self.emit(load(Size::W, DATA_END, CTX, xdp_md::DATA_END)); // data_end = ctx->data_end
            }
            Hook::TcIngress | Hook::TcEgress => {
                self.skb_wire_len();
                self.wire_frames();
                self.emit(load(Size::W, DATA_END, CTX, skb::DATA_END)); // data_end = skb->data_end
            }
            Hook::Socket => {
                self.skb_wire_len();
                self.wire_frames();
                self.cache_prologue();
            }
        }
    }

    /// Before each filter: the packet's bounds as the prologue left them. A filter
    /// narrows what the verifier knows of them (the copy's length), each path through
    /// it differently; reloaded, every path arrives at the next filter in the same
    /// state, so the verifier checks each filter once rather than once per way through
    /// the filters before it. XDP and TC need nothing: no packet pointer lives from one
    /// load to the next (see [`Translator::load_data`]).
    pub(super) fn access_filter_start(&mut self) {
        match self.hook {
            Hook::Xdp | Hook::TcIngress | Hook::TcEgress => {}
            Hook::Socket => {
                self.emit(load(Size::DW, CACHED, FP, frame::CACHED)); // cached, as copied
                // A no-op (cached <= 128) that unlinks it from the saved value, which
                // the filter's checks must not narrow.
                self.emit(alu64(AluOp::And, CACHED, imm(0xff)));
            }
        }
    }

    /// `wire_len = skb->len`, plus the 4 bytes of a VLAN tag the kernel moved out of
    /// the frame into metadata (tcpdump puts it back).
    fn skb_wire_len(&mut self) {
        let (r1, r2) = (Reg::R1, Reg::R2);
        if let Some(header) = self.cooked {
            // A cooked header instead of the link's, no tag put back.
            self.emit(load(Size::W, r1, CTX, skb::LEN)); // r1 = skb->len
            self.emit(alu64(AluOp::Add, r1, imm(header))); // r1 += the cooked header
            self.emit(store(Size::DW, FP, frame::WIRE_LEN, Operand::Reg(r1))); // wire_len = r1
            return;
        }
        self.emit(load(Size::W, r1, CTX, skb::LEN)); // r1 = skb->len
        self.emit(load(Size::W, r2, CTX, skb::VLAN_PRESENT)); // r2 = tag in metadata
        self.emit(alu64(AluOp::Lsh, r2, Operand::Imm(2)));
        self.emit(alu64(AluOp::Add, r1, Operand::Reg(r2))); // r1 += 4 * r2
        self.emit(store(Size::DW, FP, frame::WIRE_LEN, Operand::Reg(r1))); // wire_len = r1
    }

    /// Filters counting [`super::Count::Wire`] (none: nothing emitted): the frames the
    /// packet was on the wire, `wire_segs = max(gso_segs, 1)`, and their bytes,
    /// `wire_bytes = wire_len + (wire_segs - 1) * headers`: each segment after the
    /// first carries its own link, IPv4/IPv6 and TCP/UDP headers (and VLAN tag or
    /// cooked header, as `wire_len` counts them). The headers are read only for a
    /// packet of several segments, with `bpf_skb_load_bytes`; a packet whose headers
    /// are not IPv4/IPv6 then TCP/UDP, or cannot be read, counts its segments with
    /// `wire_len` bytes. Uses r7 and r8 (X is set at each filter's start).
    fn wire_frames(&mut self) {
        if !self.wire_any {
            return;
        }
        let (r0, r1, segs, hdr) = (Reg::R0, Reg::R1, Reg::R7, Reg::R8);
        let (gso, l4, udp, tcp_done, unknown, sum, done) = (
            self.local(),
            self.local(),
            self.local(),
            self.local(),
            self.local(),
            self.local(),
            self.local(),
        );
        let (v4, v6) = (self.local(), self.local());
        self.emit(load(Size::W, segs, CTX, skb::GSO_SEGS)); // segs = skb->gso_segs
        self.emit(branch64(JmpOp::Gt, segs, Operand::Imm(1), gso));
        // One frame (gso_segs is 0 for a packet the stack never merged or split).
        self.emit(store(Size::DW, FP, frame::WIRE_SEGS, Operand::Imm(1))); // wire_segs = 1
        self.emit(load(Size::DW, r1, FP, frame::WIRE_LEN));
        self.emit(store(Size::DW, FP, frame::WIRE_BYTES, Operand::Reg(r1))); // wire_bytes = wire_len
        self.emit(goto(done));
        self.asm.label(gso);
        self.emit(store(Size::DW, FP, frame::WIRE_SEGS, Operand::Reg(segs))); // wire_segs = segs
        // hdr = the network header's offset: 0 behind a cooked header, else Ethernet's 14
        // (a tag the kernel took out is counted below).
        let l3 = if self.cooked.is_some() { 0 } else { 14 };
        self.emit(mov64(hdr, Operand::Imm(l3)));
        self.emit(load(Size::W, r1, CTX, skb::PROTOCOL)); // r1 = skb->protocol
        self.emit(Insn::Endian {
            to: Endian::Be,
            bits: 16,
            dst: r1,
        });
        self.emit(branch64(JmpOp::Eq, r1, Operand::Imm(0x0800), v4));
        self.emit(branch64(JmpOp::Eq, r1, Operand::Imm(0x86dd), v6));
        self.emit(goto(unknown));
        self.asm.label(v4);
        self.skb_byte(hdr, 9, unknown); // r0 = the IPv4 protocol
        self.emit(store(Size::DW, FP, frame::SPILL, Operand::Reg(r0)));
        self.skb_byte(hdr, 0, unknown); // r0 = version and IHL
        self.emit(alu64(AluOp::And, r0, Operand::Imm(0xf)));
        self.emit(alu64(AluOp::Lsh, r0, Operand::Imm(2)));
        self.emit(alu64(AluOp::Add, hdr, Operand::Reg(r0))); // hdr = the L4 header's offset
        self.emit(load(Size::DW, r0, FP, frame::SPILL)); // r0 = the protocol
        self.emit(goto(l4));
        self.asm.label(v6);
        self.skb_byte(hdr, 6, unknown); // r0 = the IPv6 next header
        self.emit(alu64(AluOp::Add, hdr, Operand::Imm(40))); // hdr = the L4 header's offset
        self.asm.label(l4);
        self.emit(branch64(JmpOp::Eq, r0, Operand::Imm(17), udp));
        self.emit(branch64(JmpOp::Ne, r0, Operand::Imm(6), unknown));
        self.skb_byte(hdr, 12, unknown); // r0 = TCP data offset
        self.emit(alu64(AluOp::Rsh, r0, Operand::Imm(4)));
        self.emit(alu64(AluOp::Lsh, r0, Operand::Imm(2)));
        self.emit(alu64(AluOp::Add, hdr, Operand::Reg(r0))); // hdr = the payload's offset
        self.emit(goto(tcp_done));
        self.asm.label(udp);
        self.emit(alu64(AluOp::Add, hdr, Operand::Imm(8))); // hdr = the payload's offset
        self.asm.label(tcp_done);
        // What wire_len adds to skb->len per frame: the cooked header, or a VLAN tag.
        match self.cooked {
            Some(header) => self.emit(alu64(AluOp::Add, hdr, imm(header))),
            None => {
                self.emit(load(Size::W, r1, CTX, skb::VLAN_PRESENT)); // r1 = tag in metadata
                self.emit(alu64(AluOp::Lsh, r1, Operand::Imm(2)));
                self.emit(alu64(AluOp::Add, hdr, Operand::Reg(r1))); // hdr += 4 * r1
            }
        }
        self.emit(goto(sum));
        self.asm.label(unknown);
        self.emit(mov64(hdr, Operand::Imm(0))); // headers unknown: none added
        self.asm.label(sum);
        self.emit(alu64(AluOp::Sub, segs, Operand::Imm(1)));
        self.emit(alu64(AluOp::Mul, segs, Operand::Reg(hdr))); // segs = (segs - 1) * hdr
        self.emit(load(Size::DW, r1, FP, frame::WIRE_LEN));
        self.emit(alu64(AluOp::Add, r1, Operand::Reg(segs)));
        self.emit(store(Size::DW, FP, frame::WIRE_BYTES, Operand::Reg(r1))); // wire_bytes
        self.asm.label(done);
    }

    /// `r0 = P[offset + k:1]` with `bpf_skb_load_bytes`; to `fail` if it cannot be
    /// read. Clobbers r1-r5.
    fn skb_byte(&mut self, offset: Reg, k: i32, fail: crate::insn::Label) {
        let (r0, r1, r2, r3, r4) = (Reg::R0, Reg::R1, Reg::R2, Reg::R3, Reg::R4);
        self.emit(mov64(r1, Operand::Reg(CTX))); // r1 = skb
        self.emit(mov64(r2, Operand::Reg(offset)));
        self.emit(alu64(AluOp::Add, r2, Operand::Imm(k))); // r2 = offset + k
        self.emit(mov64(r3, Operand::Reg(FP)));
        self.emit(alu64(AluOp::Add, r3, Operand::Imm(frame::BUFFER.into()))); // r3 = buffer
        self.emit(mov64(r4, Operand::Imm(1))); // r4 = 1 byte
        self.emit(Insn::Call(Helper::SkbLoadBytes));
        self.emit(branch64(JmpOp::Ne, r0, Operand::Imm(0), fail));
        self.emit(load(Size::B, r0, FP, frame::BUFFER)); // r0 = the byte
    }

    /// XDP and TC: `dst = data`, the packet's first byte, read from the context at
    /// each load rather than kept in a register. A kept pointer carries the range the
    /// checks before proved readable, which differs from path to path, and the
    /// verifier cannot prune a path whose range is shorter than one it has seen: the
    /// `geneve` filters' 2,246 verified instructions were 14,449 that way. The load
    /// costs no more than the register copy (`cargo xtask bench`'s hooks table).
    fn load_data(&mut self, dst: Reg) {
        match self.hook {
            Hook::Xdp => self.emit(load(Size::W, dst, CTX, xdp_md::DATA)), // dst = ctx->data
            _ => self.emit(load(Size::W, dst, CTX, skb::DATA)),            // dst = skb->data
        }
    }

    /// Socket filters: copies the packet's first bytes to the stack and leaves their
    /// number in `CACHED`.
    fn cache_prologue(&mut self) {
        let (have_len, done) = (self.local(), self.local());
        let (r1, r2, r3, r4) = (Reg::R1, Reg::R2, Reg::R3, Reg::R4);
        self.emit(load(Size::W, CACHED, CTX, skb::LEN)); // cached = skb->len
        self.emit(branch64(JmpOp::Le, CACHED, imm(CACHE_BYTES), have_len));
        self.emit(mov64(CACHED, imm(CACHE_BYTES))); // cached = min(skb->len, CACHE_BYTES)
        self.asm.label(have_len);
        self.emit(store(Size::DW, FP, frame::CACHE_SLACK, Operand::Imm(0))); // slack = 0
        // An empty packet: nothing to copy (nor may the helper copy nothing).
        self.emit(branch64(JmpOp::Eq, CACHED, Operand::Imm(0), done));
        self.emit(mov64(r1, Operand::Reg(CTX))); // r1 = skb
        self.emit(mov32(r2, Operand::Imm(0))); // r2 = offset 0
        self.emit(mov64(r3, Operand::Reg(FP))); // r3 = the copy
        self.emit(alu64(AluOp::Add, r3, Operand::Imm(frame::COPY.into())));
        // r4 = cached, through a mask that changes nothing (1 <= cached <= 128) but
        // unlinks r4 from `cached`: the verifier tracks a helper's size exactly, and
        // would then track `cached` exactly in every filter after, each narrowing it
        // differently: a program of many filters would not converge.
        self.emit(mov64(r4, Operand::Reg(CACHED)));
        self.emit(alu64(AluOp::Sub, r4, Operand::Imm(1)));
        self.emit(alu64(AluOp::And, r4, imm(CACHE_BYTES - 1)));
        self.emit(alu64(AluOp::Add, r4, Operand::Imm(1))); // r4 = cached
        self.emit(Insn::Call(Helper::SkbLoadBytes));
        self.emit(branch64(JmpOp::Eq, A, Operand::Imm(0), done));
        // Not expected (cached <= skb->len); should it fail, every load takes the
        // helper, which decides.
        self.emit(mov64(CACHED, Operand::Imm(0))); // cached = 0
        self.asm.label(done);
        self.emit(store(Size::DW, FP, frame::CACHED, Operand::Reg(CACHED))); // saved for each filter
    }

    /// `A = P[k:size]`, big endian.
    pub(super) fn load_abs(&mut self, size: Size, offset: u32) {
        if offset > i32::MAX as u32 {
            // Beyond any packet: libpcap's bounds check rejects.
            self.emit(goto(self.reject()));
            return;
        }
        let end = offset + bytes(size);
        match self.hook {
            Hook::Socket if end <= CACHE_BYTES => {
                // The copy holds min(len, CACHE_BYTES) bytes: fewer than `end` means
                // the packet ends before.
                self.emit(branch64(JmpOp::Lt, CACHED, imm(end), self.reject())); // past the packet
                let at = frame::COPY + offset as i16;
                if at.rem_euclid(bytes(size) as i16) != 0 {
                    self.load_from_copy_bytewise(size, FP, at); // A = P[k]
                    return;
                }
                self.emit(load(size, A, FP, at)); // A = P[k], network order
            }
            Hook::TcIngress | Hook::TcEgress | Hook::Xdp if end <= DIRECT_LIMIT => {
                let (slow, done) = (self.local(), self.local());
                let (r1, r2) = (Reg::R1, Reg::R2);
                self.load_data(r1); // r1 = data + k
                self.emit(alu64(AluOp::Add, r1, imm(offset)));
                self.emit(mov64(r2, Operand::Reg(r1))); // r2 = past the bytes loaded
                self.emit(alu64(AluOp::Add, r2, imm(bytes(size))));
                self.emit(branch64(JmpOp::Gt, r2, Operand::Reg(DATA_END), slow)); // not directly readable
                self.emit(load(size, A, r1, 0)); // A = P[k], network order
                self.emit(goto(done));
                self.asm.label(slow);
                self.emit(mov32(r2, imm(offset))); // r2 = k
                self.load_bytes_helper(size);
                self.asm.label(done);
            }
            _ => {
                self.emit(mov32(Reg::R2, imm(offset))); // r2 = k
                self.load_bytes_helper(size);
            }
        }
        self.network_to_host(size);
    }

    /// `A = P[X + k:size]`. libpcap rejects when `X + k` overflows 32 bits or lies past
    /// the packet; the guard keeps libpcap's meaning, and is left out when X is known
    /// small enough that neither can happen.
    pub(super) fn load_ind(&mut self, size: Size, offset: u32, x_bound: u32) {
        if offset > i32::MAX as u32 {
            self.emit(goto(self.reject()));
            return;
        }
        let guarded = u64::from(x_bound) + u64::from(offset) > i32::MAX as u64;
        let (r1, r2, r3) = (Reg::R1, Reg::R2, Reg::R3);
        let (slow, done) = (self.local(), self.local());
        self.emit(mov64(r1, Operand::Reg(X))); // r1 = X + k, without wrapping
        self.emit(alu64(AluOp::Add, r1, imm(offset)));
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
        if guarded {
            self.emit(branch64(
                JmpOp::Gt,
                r1,
                Operand::Imm(i32::MAX),
                self.reject(),
            )); // past any packet
        }
        if self.hook == Hook::Socket {
            // Not `r1 + size > cached`: the verifier links r1's copies and would then
            // track `cached` exactly, and a program of many filters, each narrowing it
            // differently, would no longer converge. A difference links nothing.
            self.emit(mov64(r3, Operand::Reg(CACHED))); // r3 = bytes in the copy from X + k
            self.emit(alu64(AluOp::Sub, r3, Operand::Reg(r1)));
            self.emit(branch64(JmpOp::Slt, r3, imm(bytes(size)), slow)); // not all in the copy
            // A no-op (r1 + size <= CACHE_BYTES), which tells the verifier the read
            // stays in the copy and its slack.
            self.emit(alu64(AluOp::And, r1, imm(CACHE_BYTES - 1)));
            self.emit(mov64(r2, Operand::Reg(FP))); // r2 = the copy + X + k
            self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
            self.load_from_copy_bytewise(size, r2, frame::COPY); // A = P[X + k]
            self.emit(goto(done));
            self.asm.label(slow);
            self.emit(mov64(r2, Operand::Reg(r1))); // r2 = X + k
            self.load_bytes_helper(size);
            self.network_to_host(size);
            self.asm.label(done);
            return;
        } else {
            // Bounded for the verifier; further offsets take the helper.
            self.emit(branch64(
                JmpOp::Gt,
                r1,
                imm(DIRECT_LIMIT - bytes(size)),
                slow,
            ));
            self.load_data(r2); // r2 = data + X + k
            self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
            self.emit(mov64(r3, Operand::Reg(r2))); // r3 = past the bytes loaded
            self.emit(alu64(AluOp::Add, r3, imm(bytes(size))));
            self.emit(branch64(JmpOp::Gt, r3, Operand::Reg(DATA_END), slow)); // not directly readable
            self.emit(load(size, A, r2, 0)); // A = P[X + k], network order
        }
        self.emit(goto(done));
        self.asm.label(slow);
        self.emit(mov64(r2, Operand::Reg(r1))); // r2 = X + k
        self.load_bytes_helper(size);
        self.asm.label(done);
        self.network_to_host(size);
    }

    /// `A = the size bytes at base + offset` of the socket filter's stack copy, in host
    /// order, one byte at a time: the verifier wants stack reads aligned, and an
    /// indexed offset's alignment is unknown. Clobbers r3.
    fn load_from_copy_bytewise(&mut self, size: Size, base: Reg, offset: i16) {
        let r3 = Reg::R3;
        self.emit(load(Size::B, A, base, offset)); // A = the first byte
        for i in 1..bytes(size) as i16 {
            self.emit(alu32(AluOp::Lsh, A, Operand::Imm(8))); // A = A << 8 | the next byte
            self.emit(load(Size::B, r3, base, offset + i));
            self.emit(alu32(AluOp::Or, A, Operand::Reg(r3)));
        }
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

    /// `A = P[r2:size]` in network order through the hook's load helper
    /// (`bpf_xdp_load_bytes` reads across buffers, `bpf_skb_load_bytes` across the
    /// skb's fragments); out of bounds, the filter rejects.
    fn load_bytes_helper(&mut self, size: Size) {
        let (r1, r3, r4) = (Reg::R1, Reg::R3, Reg::R4);
        let helper = match self.hook {
            Hook::Xdp => Helper::XdpLoadBytes,
            Hook::TcIngress | Hook::TcEgress | Hook::Socket => Helper::SkbLoadBytes,
        };
        self.emit(mov64(r1, Operand::Reg(CTX))); // r1 = ctx
        self.emit(mov64(r3, Operand::Reg(FP))); // r3 = buffer
        self.emit(alu64(AluOp::Add, r3, Operand::Imm(frame::BUFFER.into())));
        self.emit(mov32(r4, imm(bytes(size)))); // r4 = length
        self.emit(Insn::Call(helper));
        self.emit(branch64(JmpOp::Slt, A, Operand::Imm(0), self.reject())); // past the packet
        self.emit(load(size, A, FP, frame::BUFFER)); // A = the bytes, network order
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
        match self.hook {
            Hook::Xdp => self.emit(load(Size::W, dst, FP, frame::WIRE_LEN)), // dst = every buffer's bytes
            Hook::TcIngress | Hook::TcEgress | Hook::Socket => {
                self.emit(load(Size::W, dst, CTX, skb::LEN))
            } // dst = skb->len
        }
    }

    /// `X = 4 * (P[k:1] & 0xf)`, A unchanged.
    pub(super) fn load_msh(&mut self, offset: u32) {
        if offset > i32::MAX as u32 {
            self.emit(goto(self.reject()));
            return;
        }
        self.emit(store(Size::DW, FP, frame::SPILL, Operand::Reg(A))); // keep A
        self.load_abs(Size::B, offset); // A = P[k:1]
        self.emit(alu32(AluOp::And, A, Operand::Imm(0xf))); // A &= 0xf
        self.emit(alu32(AluOp::Lsh, A, Operand::Imm(2))); // A <<= 2
        self.emit(mov64(X, Operand::Reg(A))); // X = 4 * (P[k:1] & 0xf)
        self.emit(load(Size::W, A, FP, frame::SPILL)); // A back
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
            (Ancillary::PktType, Hook::TcEgress) => {
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

    /// [`super::Count::Wire`] filters on skb hooks: `packets += wire_segs`, `bytes +=
    /// wire_bytes` in the counter at `value` (from the prologue). Clobbers r1 and r2.
    pub(super) fn add_wire_frames(&mut self, value: Reg) {
        let (r1, r2) = (Reg::R1, Reg::R2);
        for (slot, offset) in [(frame::WIRE_SEGS, 0), (frame::WIRE_BYTES, 8)] {
            self.emit(load(Size::DW, r1, FP, slot));
            self.emit(load(Size::DW, r2, value, offset));
            self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
            self.emit(store(Size::DW, value, offset, Operand::Reg(r2)));
        }
    }

    /// `*(u64 *)(value + offset) += the frame's length on the wire` (from the
    /// prologue). Clobbers r1 and r2.
    pub(super) fn add_frame_length(&mut self, value: Reg, offset: i16) {
        let (r1, r2) = (Reg::R1, Reg::R2);
        self.emit(load(Size::DW, r1, FP, frame::WIRE_LEN)); // r1 = wire_len
        self.emit(load(Size::DW, r2, value, offset));
        self.emit(alu64(AluOp::Add, r2, Operand::Reg(r1)));
        self.emit(store(Size::DW, value, offset, Operand::Reg(r2)));
    }
}
