//! A classic program's shape, and what evaluating one shape for many filters needs.
//!
//! Filters whose classic programs are equal but for the constants their `jeq #k`
//! instructions compare with (`udp and dst port 53` and `udp and dst port 123`) have
//! one *shape*. Where the members of a group differ, at the *varying* points, the
//! shared code cannot compare with one constant: it looks the value it has up in a
//! hash map instead, which names the one member whose constant equals it.
//!
//! Whether that is exact depends on the shape and on which points vary, and
//! [`Template::analyse`] decides it. Think of the *default path*: the way through the
//! program a filter takes when every varying comparison is false, which is the same
//! for every member (it depends on the packet only). A member leaves it at the first
//! varying point whose value equals its constant, and from there takes the true
//! branch. The shared code is exact when
//! - the default path never accepts (else every member that never leaves it would
//!   count, and a packet would cost every member),
//! - what follows the true branch of a varying point holds no varying point (so once
//!   a member has left the default path, its verdict is the same for every member
//!   leaving there and is computed once),
//! - and writes no scratch memory (the default path goes on after it, with the
//!   scratch words as they were).
//!
//! A member that meets its constant at two points of one default path (`host A` on a
//! packet from A to A) leaves at the first: the code remembers who left where and
//! skips them later ([`Template::remembered`]).

use crate::cbpf::{ClassicInsn, Cond, Program, Src};

/// The most varying points of a group that the code must remember a member at.
pub const MOST_REMEMBERED: usize = 12;

/// The shape of a classic program: itself, with the constants of `jeq #k` and of
/// accepting returns set to 0 (any accepting `ret` counts the same).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape(Vec<ClassicInsn>);

impl Shape {
    pub fn of(program: &Program) -> Self {
        Self(
            program
                .insns()
                .iter()
                .map(|insn| match *insn {
                    ClassicInsn::Jump {
                        cond: Cond::Eq,
                        src: Src::K(_),
                        jt,
                        jf,
                    } => ClassicInsn::Jump {
                        cond: Cond::Eq,
                        src: Src::K(0),
                        jt,
                        jf,
                    },
                    ClassicInsn::RetK(k) if k != 0 => ClassicInsn::RetK(1),
                    other => other,
                })
                .collect(),
        )
    }
}

/// The points of `program` where a constant can vary between members of one shape:
/// `jeq #k` whose two branches differ.
pub fn comparisons(program: &Program) -> impl Iterator<Item = (usize, u32)> + '_ {
    program
        .insns()
        .iter()
        .enumerate()
        .filter_map(|(pc, insn)| match *insn {
            ClassicInsn::Jump {
                cond: Cond::Eq,
                src: Src::K(k),
                jt,
                jf,
            } if jt != jf => Some((pc, k)),
            _ => None,
        })
}

/// A shape with its varying points chosen: what the shared code of a group is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The varying points, ascending.
    pub varying: Vec<usize>,
    /// For each varying point (same order), the classic instructions reached from its
    /// true branch, ascending: the code run once for the member that leaves there.
    pub branches: Vec<Vec<usize>>,
    /// For each varying point, the varying points that may come before it on the
    /// default path (indices into `varying`).
    pub before: Vec<Vec<usize>>,
    /// The varying points where the code must remember which member left (those
    /// before some other), indices into `varying`; a member left at
    /// `remembered[i]` is kept in the frame's slot `i`.
    pub remembered: Vec<usize>,
}

/// Why a shape cannot be evaluated once for several members with these points varying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotShared {
    #[error("nothing varies")]
    NothingVaries,
    #[error("the program loops")]
    Loops,
    #[error("the default path can accept (instruction {pc})")]
    DefaultAccepts { pc: usize },
    #[error("the true branch of varying instruction {pc} reaches varying instruction {other}")]
    NestedVarying { pc: usize, other: usize },
    #[error("the true branch of varying instruction {pc} writes scratch memory")]
    BranchStores { pc: usize },
    #[error("more than {MOST_REMEMBERED} varying points to remember")]
    TooManyRemembered,
}

impl Template {
    /// Decides whether `program`'s shape can be evaluated once for members that differ
    /// at `varying` (each a [`comparisons`] point), and lays out the code if so.
    pub fn analyse(program: &Program, varying: &[usize]) -> Result<Template, NotShared> {
        if varying.is_empty() {
            return Err(NotShared::NothingVaries);
        }
        if program.has_loops() {
            return Err(NotShared::Loops);
        }
        let insns = program.insns();
        let is_varying = |pc: usize| varying.binary_search(&pc).is_ok();
        let index = |pc: usize| varying.binary_search(&pc).expect("a varying point");

        // The default path: one forward sweep (no loops), a varying point going on to
        // its false branch only. `seen[pc]`: the varying points that may come before,
        // as sets of bits, so that a filter of thousands of comparisons (`host A or
        // host B or ...`) is analysed in time linear in its size, not cubic.
        let mut reached = vec![false; insns.len()];
        let mut seen = vec![PointSet::new(varying.len()); insns.len()];
        reached[0] = true;
        for (pc, insn) in insns.iter().enumerate() {
            if !reached[pc] {
                continue;
            }
            match *insn {
                ClassicInsn::RetK(0) => continue,
                ClassicInsn::RetK(_) | ClassicInsn::RetA => {
                    return Err(NotShared::DefaultAccepts { pc });
                }
                _ => {}
            }
            let successors = insn.successors(pc);
            let mut out = seen[pc].clone();
            let next = if is_varying(pc) {
                out.insert(index(pc));
                &successors[1..]
            } else {
                &successors[..]
            };
            for &to in next {
                reached[to] = true;
                seen[to].union_with(&out);
            }
        }

        // What each true branch reaches, for every point at once (control only goes
        // forward): the first varying point, and whether any store.
        let mut first_varying: Vec<Option<usize>> = vec![None; insns.len()];
        let mut stores = vec![false; insns.len()];
        for pc in (0..insns.len()).rev() {
            let mut first = is_varying(pc).then_some(pc);
            let mut store = matches!(insns[pc], ClassicInsn::StoreA(_) | ClassicInsn::StoreX(_));
            for to in insns[pc].successors(pc) {
                first = match (first, first_varying[to]) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                store |= stores[to];
            }
            first_varying[pc] = first;
            stores[pc] = store;
        }
        let branch_start = |pc: usize| {
            let ClassicInsn::Jump { jt, .. } = insns[pc] else {
                unreachable!("varying points are comparisons");
            };
            pc + 1 + usize::from(jt)
        };
        for &pc in varying {
            let start = branch_start(pc);
            if let Some(other) = first_varying[start] {
                return Err(NotShared::NestedVarying { pc, other });
            }
            if stores[start] {
                return Err(NotShared::BranchStores { pc });
            }
        }

        let mut any_before = PointSet::new(varying.len());
        for &pc in varying {
            any_before.union_with(&seen[pc]);
        }
        let remembered = any_before.points();
        if remembered.len() > MOST_REMEMBERED {
            return Err(NotShared::TooManyRemembered);
        }
        let before: Vec<Vec<usize>> = varying.iter().map(|&pc| seen[pc].points()).collect();
        let branches = varying
            .iter()
            .map(|&pc| reachable_from(program, branch_start(pc)))
            .collect();
        Ok(Template {
            varying: varying.to_vec(),
            branches,
            before,
            remembered,
        })
    }

    /// The frame slot (index into [`Template::remembered`]) of varying point `i`, if it
    /// is remembered.
    pub fn remembered_at(&self, i: usize) -> Option<usize> {
        self.remembered.binary_search(&i).ok()
    }
}

/// A set of varying points, by index into [`Template::varying`].
#[derive(Debug, Clone)]
struct PointSet(Vec<u64>);

impl PointSet {
    fn new(points: usize) -> Self {
        Self(vec![0; points.div_ceil(64)])
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn union_with(&mut self, other: &PointSet) {
        for (word, add) in self.0.iter_mut().zip(&other.0) {
            *word |= add;
        }
    }

    /// The points, ascending.
    fn points(&self) -> Vec<usize> {
        let mut points = Vec::new();
        for (at, &word) in self.0.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                points.push(at * 64 + rest.trailing_zeros() as usize);
                rest &= rest - 1;
            }
        }
        points
    }
}

/// The classic instructions control may reach from `start`, ascending.
fn reachable_from(program: &Program, start: usize) -> Vec<usize> {
    let insns = program.insns();
    let mut reached = vec![false; insns.len()];
    reached[start] = true;
    for pc in start..insns.len() {
        if reached[pc] {
            for to in insns[pc].successors(pc) {
                reached[to] = true;
            }
        }
    }
    (start..insns.len()).filter(|&pc| reached[pc]).collect()
}
