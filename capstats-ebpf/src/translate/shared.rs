//! The code of a shared program: groups evaluated once for all their members, and
//! counting through the counter table (see [`crate::shared`]).

use crate::cbpf::{ClassicInsn, Program};
use crate::insn::build::*;
use crate::insn::{AluOp, Helper, Insn, JmpOp, Label, Operand, Reg, Size};
use crate::shared::presence;
use crate::shared::shape::Template;

use super::{A, FP, SharedMaps, Translator, X, frame, imm, x_upper_bounds};

impl Translator {
    /// Group `number`'s code: `program` (its first member's) along the default path,
    /// and at each varying point the dispatch to the member comparing equal there.
    pub(super) fn group_block(
        &mut self,
        number: u16,
        program: &Program,
        template: &Template,
        maps: SharedMaps,
    ) {
        self.access_filter_start();
        self.emit(mov32(A, Operand::Imm(0))); // A = 0
        self.emit(mov32(X, Operand::Imm(0))); // X = 0
        for slot in 0..template.remembered.len() {
            // nobody left the default path there yet
            self.emit(store(
                Size::DW,
                FP,
                frame::remembered(slot),
                Operand::Imm(-1),
            ));
        }
        let x_bounds = x_upper_bounds(program);
        for (pc, insn) in program.insns().iter().enumerate() {
            self.asm.label(self.classic(pc));
            match template.varying.binary_search(&pc) {
                Ok(point) => self.dispatch(number, program, template, point, &x_bounds, maps),
                // Off the default path (the analysis made sure): only a member's branch
                // accepts, in its own copy of the code.
                Err(_) if matches!(insn, ClassicInsn::RetA | ClassicInsn::RetK(1..)) => {
                    self.emit(goto(self.reject()))
                }
                Err(_) => self.insn(pc, *insn, x_bounds[pc]),
            }
        }
    }

    /// Varying point `point` of the group: looks up (group, pc, A); the member found,
    /// unless it left the default path before, runs the point's true branch (a copy
    /// of the code with labels of its own) and counts if it accepts. Then the default
    /// path goes on at the false branch with A and X as they were.
    fn dispatch(
        &mut self,
        number: u16,
        program: &Program,
        template: &Template,
        point: usize,
        x_bounds: &[u32],
        maps: SharedMaps,
    ) {
        let pc = template.varying[point];
        let ClassicInsn::Jump { jf, .. } = program.insns()[pc] else {
            unreachable!("a varying point is a comparison");
        };
        let on_false = self.classic(pc + 1 + usize::from(jf));
        let branch = self.next_branch;
        self.next_branch += 1;
        let (r0, r1, r2) = (Reg::R0, Reg::R1, Reg::R2);
        let done = Label::Reject(branch);

        self.emit(mov32(r2, Operand::Reg(A))); // r2 = A
        self.emit(store(Size::DW, FP, frame::SAVED_A, Operand::Reg(r2))); // saved A = A
        self.emit(store(Size::DW, FP, frame::SAVED_X, Operand::Reg(X))); // saved X = X
        self.emit(mov32(r1, imm((u32::from(number) << 16) | pc as u32))); // r1 = group, pc
        self.emit(alu64(AluOp::Lsh, r1, Operand::Imm(32)));
        self.emit(alu64(AluOp::Or, r1, Operand::Reg(r2))); // r1 = (group, pc, A)
        self.emit(store(Size::DW, FP, frame::DISPATCH_KEY, Operand::Reg(r1))); // key = r1
        // No member has the key if its bit is clear: no look-up then.
        for insn in presence::emit_check(r1, done, maps.presence) {
            self.emit(insn);
        }
        self.emit(Insn::LoadMap {
            dst: r1,
            map: maps.dispatch,
        }); // r1 = dispatch map
        self.emit(mov64(r2, Operand::Reg(FP))); // r2 = &key
        self.emit(alu64(
            AluOp::Add,
            r2,
            Operand::Imm(frame::DISPATCH_KEY.into()),
        ));
        self.emit(Insn::Call(Helper::MapLookupElem)); // r0 = the member comparing equal
        self.emit(branch64(JmpOp::Eq, r0, Operand::Imm(0), done)); // none: default path
        self.emit(load(Size::W, r1, r0, 0)); // r1 = its table entry
        for &earlier in &template.before[point] {
            let slot = template
                .remembered_at(earlier)
                .expect("a point before another is remembered");
            self.emit(load(Size::DW, r2, FP, frame::remembered(slot))); // r2 = who left there
            self.emit(branch64(JmpOp::Eq, r1, Operand::Reg(r2), done)); // it left before
        }
        if let Some(slot) = template.remembered_at(point) {
            self.emit(store(
                Size::DW,
                FP,
                frame::remembered(slot),
                Operand::Reg(r1),
            )); // it left here
        }
        self.emit(store(Size::DW, FP, frame::ENTRY, Operand::Reg(r1))); // entry = r1
        self.emit(load(Size::W, A, FP, frame::SAVED_A)); // A = saved A

        let outer = self.filter;
        self.filter = branch;
        for &at in &template.branches[point] {
            self.asm.label(self.classic(at));
            self.insn(at, program.insns()[at], x_bounds[at]);
        }
        self.filter = outer;
        self.asm.label(Label::Accept(branch));
        self.count_entry(done);
        self.asm.label(done);
        self.emit(load(Size::DW, X, FP, frame::SAVED_X)); // X = saved X
        self.emit(load(Size::W, A, FP, frame::SAVED_A)); // A = saved A
        self.emit(goto(on_false));
    }

    /// One packet and its bytes into the counter map at the table entry in the
    /// frame's `ENTRY` slot; on to `done` (also when the entry is empty).
    pub(super) fn count_entry(&mut self, done: Label) {
        let (r0, r1, r2) = (Reg::R0, Reg::R1, Reg::R2);
        self.emit(Insn::LoadMap {
            dst: r1,
            map: self.table,
        }); // r1 = counter table
        self.emit(mov64(r2, Operand::Reg(FP))); // r2 = &entry
        self.emit(alu64(AluOp::Add, r2, Operand::Imm(frame::ENTRY.into())));
        self.emit(Insn::Call(Helper::MapLookupElem)); // r0 = the counter map
        self.emit(branch64(JmpOp::Eq, r0, Operand::Imm(0), done));
        self.emit(mov64(r1, Operand::Reg(r0))); // r1 = the counter map
        self.emit(store(Size::DW, FP, frame::KEY, Operand::Imm(0))); // key = 0
        self.emit(mov64(r2, Operand::Reg(FP))); // r2 = &key
        self.emit(alu64(AluOp::Add, r2, Operand::Imm(frame::KEY.into())));
        self.emit(Insn::Call(Helper::MapLookupElem)); // r0 = its counter on this CPU
        self.emit(branch64(JmpOp::Eq, r0, Operand::Imm(0), done));
        self.add_one(r0);
    }
}
