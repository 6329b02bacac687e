//! The assembler: a list of instructions and labels in, resolved instructions out.
//!
//! Jumps name [`Label`]s while a program is built; [`Assembler::finish`] is the one pass
//! that turns them into slot offsets, so nobody counts skips by hand.

use std::collections::HashMap;

use crate::insn::{Insn, Label, Target};

/// Why labels could not be resolved. Names the instruction index and the label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("instruction {index} (`{insn}`) jumps to label {label}, which is never placed")]
    UnknownLabel {
        index: usize,
        insn: Insn,
        label: Label,
    },
    #[error("label {label} is placed twice")]
    DuplicateLabel { label: Label },
    #[error(
        "instruction {index} (`{insn}`) jumps {distance} slots, beyond the 16-bit offset of eBPF"
    )]
    JumpTooFar {
        index: usize,
        insn: Insn,
        distance: i64,
    },
}

/// Collects instructions and labels in program order.
#[derive(Debug, Default, Clone)]
pub struct Assembler {
    insns: Vec<Insn>,
    /// Label → index into `insns` of the instruction it precedes.
    labels: Vec<(Label, usize)>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an instruction.
    pub fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// Places `label` before the next instruction pushed.
    pub fn label(&mut self, label: Label) {
        self.labels.push((label, self.insns.len()));
    }

    /// Drops the instructions no path from the first one reaches, which the verifier
    /// refuses ("unreachable insn"): code after a load the translator knows fails, or
    /// classic instructions nothing jumps to. Labels move with what follows them.
    fn without_unreachable(self) -> Result<Self, AsmError> {
        let mut at = HashMap::with_capacity(self.labels.len());
        for (label, index) in &self.labels {
            if at.insert(*label, *index).is_some() {
                return Err(AsmError::DuplicateLabel { label: *label });
            }
        }
        let mut reachable = vec![false; self.insns.len()];
        let mut todo = vec![0usize];
        while let Some(index) = todo.pop() {
            if index >= self.insns.len() || reachable[index] {
                continue;
            }
            reachable[index] = true;
            let insn = &self.insns[index];
            if let Some(Target::Label(label)) = insn.target() {
                let &dest = at.get(&label).ok_or(AsmError::UnknownLabel {
                    index,
                    insn: *insn,
                    label,
                })?;
                todo.push(dest);
            }
            if !matches!(insn, Insn::Jump { .. } | Insn::Exit) {
                todo.push(index + 1);
            }
        }
        // New index of each old one: how many kept instructions come before it.
        let mut kept_before = Vec::with_capacity(self.insns.len() + 1);
        let mut kept = 0;
        for &live in &reachable {
            kept_before.push(kept);
            kept += usize::from(live);
        }
        kept_before.push(kept);
        Ok(Self {
            insns: self
                .insns
                .into_iter()
                .zip(&reachable)
                .filter_map(|(insn, &live)| live.then_some(insn))
                .collect(),
            labels: self
                .labels
                .into_iter()
                .map(|(label, index)| (label, kept_before[index]))
                .collect(),
        })
    }

    /// The program as assembly text, labels as written (`accept:`, `goto reject`),
    /// after dropping unreachable instructions: what people read in `--dump`, and
    /// what tests compare, since it does not change when unrelated code moves.
    pub fn listing(self) -> Result<String, AsmError> {
        let this = self.without_unreachable()?;
        let mut text = String::new();
        for (index, insn) in this.insns.iter().enumerate() {
            for (label, _) in this.labels.iter().filter(|(_, at)| *at == index) {
                text.push_str(&format!("{label}:\n"));
            }
            text.push_str(&format!("    {insn}\n"));
        }
        Ok(text)
    }

    /// Drops unreachable instructions and resolves every label to a slot offset.
    pub fn finish(self) -> Result<Vec<Insn>, AsmError> {
        let this = self.without_unreachable()?;
        this.resolve()
    }

    fn resolve(self) -> Result<Vec<Insn>, AsmError> {
        // Slot position of each instruction (64-bit immediates take two).
        let mut slot_of = Vec::with_capacity(self.insns.len() + 1);
        let mut slot = 0usize;
        for insn in &self.insns {
            slot_of.push(slot);
            slot += insn.slots();
        }
        slot_of.push(slot);

        let mut at = HashMap::with_capacity(self.labels.len());
        for (label, index) in &self.labels {
            if at.insert(*label, slot_of[*index]).is_some() {
                return Err(AsmError::DuplicateLabel { label: *label });
            }
        }

        self.insns
            .iter()
            .enumerate()
            .map(|(index, insn)| {
                let Some(Target::Label(label)) = insn.target() else {
                    return Ok(*insn);
                };
                let &dest = at.get(&label).ok_or(AsmError::UnknownLabel {
                    index,
                    insn: *insn,
                    label,
                })?;
                let distance = dest as i64 - (slot_of[index] as i64 + 1);
                let offset = i16::try_from(distance).map_err(|_| AsmError::JumpTooFar {
                    index,
                    insn: *insn,
                    distance,
                })?;
                Ok(insn.with_target(Target::Offset(offset)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::build::*;
    use crate::insn::{JmpOp, Operand::Imm, Reg::*};

    #[test]
    fn labels_become_slot_offsets_counting_wide_instructions_twice() {
        let mut asm = Assembler::new();
        asm.push(goto(Label::Accept(0))); // slot 0
        asm.label(Label::Local(0));
        asm.push(Insn::LoadImm64 { dst: R1, imm: 1 }); // slots 1-2
        asm.push(goto(Label::Local(0))); // slot 3
        asm.label(Label::Accept(0));
        asm.push(Insn::Exit); // slot 4
        // (Slots 1-3 are unreachable: resolve without the pass that drops them.)
        let text: Vec<String> = asm.resolve().unwrap().iter().map(Insn::to_string).collect();
        assert_eq!(text, ["goto +3", "r1 = 0x1 ll", "goto -3", "exit"]);
    }

    #[test]
    fn unreachable_instructions_are_dropped_and_jumps_still_land() {
        let mut asm = Assembler::new();
        asm.push(goto(Label::Local(0))); // 0
        asm.push(mov32(R0, Imm(1))); // unreachable
        asm.push(goto(Label::Accept(0))); // unreachable
        asm.label(Label::Local(0));
        asm.push(branch32(JmpOp::Eq, R0, Imm(0), Label::Accept(0)));
        asm.push(mov32(R0, Imm(2)));
        asm.label(Label::Accept(0));
        asm.push(Insn::Exit);
        asm.push(mov32(R0, Imm(3))); // after exit: unreachable
        let text: Vec<String> = asm.finish().unwrap().iter().map(Insn::to_string).collect();
        assert_eq!(text, ["goto +0", "if w0 == 0 goto +1", "w0 = 2", "exit"]);
    }

    #[test]
    fn a_missing_label_names_the_instruction() {
        let mut asm = Assembler::new();
        asm.push(mov32(R0, Imm(0)));
        asm.push(goto(Label::Reject(0)));
        let err = asm.finish().unwrap_err();
        assert_eq!(
            err.to_string(),
            "instruction 1 (`goto reject`) jumps to label reject, which is never placed"
        );
    }

    #[test]
    fn a_label_placed_twice_is_an_error() {
        let mut asm = Assembler::new();
        asm.label(Label::Accept(0));
        asm.push(Insn::Exit);
        asm.label(Label::Accept(0));
        asm.push(Insn::Exit);
        assert_eq!(
            asm.finish().unwrap_err(),
            AsmError::DuplicateLabel {
                label: Label::Accept(0)
            }
        );
    }
}
