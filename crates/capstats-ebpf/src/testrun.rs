//! Capture files through the kernel: `capstats test`.
//!
//! Every record is handed to the same generated program a live session runs, with
//! `BPF_PROG_RUN` on a `SCHED_CLS` program (which, unlike a socket filter's test run,
//! sees the frame from its Ethernet header on, as an AF_PACKET socket filter does), and
//! the per-CPU counter map is read after each record: a record matched when its counter
//! moved. Nothing here decides a verdict in user space.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use std::io;

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use aya::sys::SyscallError;

use crate::cbpf::Program;
use crate::counters::{Counter, CounterError, CounterMap};
use crate::filter::{Filter, FilterError, open_capture};
use crate::insn::build::mov64;
use crate::insn::{Insn, Operand, Reg};
use crate::program::{LoadError, LoadedProgram};
use crate::replay::EgressReplay;
use crate::translate::{CounterSlot, Hook, translate};

/// `ETH_HLEN`: the kernel's test harness refuses shorter frames, and no Ethernet
/// device ever delivers one.
pub const MIN_FRAME: usize = 14;

/// Why a capture could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Counter(#[from] CounterError),
    #[error("cannot translate the filter: {0}")]
    Translate(#[from] crate::asm::AsmError),
    #[error("BPF_PROG_RUN of program {program} on a {len}-byte record failed: {source}")]
    Run {
        program: String,
        len: usize,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error("reading record {record} of {path}: {source}")]
    Read {
        path: String,
        record: u64,
        #[source]
        source: pcap::Error,
    },
}

/// What the kernel made of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The program counted it.
    Match,
    /// The program ran and counted nothing.
    NoMatch,
    /// Shorter than an Ethernet header: neither the test harness nor any device takes it.
    NotRunnable,
}

/// A generated counting program, loaded, with its one-slot counter map.
pub struct KernelFilter {
    insns: Vec<Insn>,
    program: LoadedProgram,
    classifier: SchedClassifier,
    counters: CounterMap,
    max_frame: usize,
    last: Counter,
    /// Set up on the first frame the harness refuses.
    replay: Option<EgressReplay>,
    replayed: u64,
}

impl KernelFilter {
    /// Translates and loads `filter` as the program a TC hook would run.
    pub fn load(filter: &Filter) -> Result<Self, TestRunError> {
        Self::load_program(filter.program())
    }

    /// Translates and loads any validated classic program.
    pub fn load_program(classic: &Program) -> Result<Self, TestRunError> {
        let counters = CounterMap::create("capstats_test", 1)?;
        let insns = translate(
            classic,
            Hook::Tc,
            CounterSlot {
                map_fd: counters.raw_fd(),
                slot: 0,
            },
        )?;
        let program = LoadedProgram::load(Hook::Tc, "capstats_test", &insns)?;
        let classifier = program.sched_classifier()?;
        let mut this = Self {
            insns,
            program,
            classifier,
            counters,
            max_frame: harness_max_frame()?,
            last: Counter::default(),
            replay: None,
            replayed: 0,
        };
        this.rebase()?;
        Ok(this)
    }

    /// The eBPF program, resolved.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The fd of the counter map the program counts into.
    pub fn counter_map_fd(&self) -> i32 {
        self.counters.raw_fd()
    }

    pub fn program(&self) -> &LoadedProgram {
        &self.program
    }

    /// The largest frame the kernel's test harness accepts on this machine.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Runs one frame through the program once and reports whether it counted it:
    /// with `BPF_PROG_RUN` when the harness takes the frame, else through the replay
    /// device's egress hook.
    pub fn run(&mut self, frame: &[u8]) -> Result<Verdict, TestRunError> {
        if frame.len() < MIN_FRAME {
            return Ok(Verdict::NotRunnable);
        }
        let harness = if frame.len() <= self.max_frame {
            self.run_once(frame)
        } else {
            Err(ProgramError::SyscallError(SyscallError {
                call: "bpf_prog_test_run",
                io_error: io::Error::from_raw_os_error(libc::EINVAL),
            }))
        };
        match harness {
            Ok(()) => {}
            // Too long, or a cut-short IPv4/IPv6 header: the harness says EINVAL.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                if self.replay.is_none() {
                    self.replay = Some(EgressReplay::new(&mut self.classifier)?);
                }
                self.replay.as_ref().expect("set above").send(frame)?;
                self.replayed += 1;
            }
            Err(source) => {
                return Err(TestRunError::Run {
                    program: self.program.name().to_owned(),
                    len: frame.len(),
                    source,
                });
            }
        }
        let now = self.counters.read(0)?;
        let moved = now != self.last;
        self.last = now;
        Ok(if moved {
            Verdict::Match
        } else {
            Verdict::NoMatch
        })
    }

    /// Frames that went through the replay device rather than the test harness.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The counters as the kernel has them.
    pub fn counter(&self) -> Result<Counter, TestRunError> {
        Ok(self.counters.read(0)?)
    }

    fn run_once(&self, frame: &[u8]) -> Result<(), ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        self.classifier.test_run(opts).map(|_| ())
    }

    /// Resets the baseline the next verdict is measured from.
    fn rebase(&mut self) -> Result<(), TestRunError> {
        self.last = self.counters.read(0)?;
        Ok(())
    }
}

/// The largest frame the kernel's test harness accepts on this machine (a page less
/// the skb's head- and tailroom), found once by bisection with a program that does
/// nothing.
pub fn harness_max_frame() -> Result<usize, TestRunError> {
    static MAX: OnceLock<usize> = OnceLock::new();
    if let Some(max) = MAX.get() {
        return Ok(*max);
    }
    let empty = [
        mov64(Reg::R0, Operand::Imm(Hook::Tc.neutral_return())),
        Insn::Exit,
    ];
    let program = LoadedProgram::load(Hook::Tc, "capstats_probe", &empty)?;
    let classifier = program.sched_classifier()?;
    let fits = |len: usize| {
        let frame = vec![0u8; len];
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        };
        classifier.test_run(opts).is_ok()
    };
    let (mut ok, mut too_big) = (MIN_FRAME, 1 << 20);
    while too_big - ok > 1 {
        let mid = (ok + too_big) / 2;
        if fits(mid) { ok = mid } else { too_big = mid }
    }
    Ok(*MAX.get_or_init(|| ok))
}

impl AsFd for KernelFilter {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.program.as_fd()
    }
}

/// Totals of a capture file run through the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Records in the file.
    pub records: u64,
    /// Records the program counted, and their captured bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Records shorter than an Ethernet header (see [`Verdict::NotRunnable`]).
    pub not_runnable: u64,
    /// Records run through the replay device's egress hook instead of the harness.
    pub replayed: u64,
    /// The counter map after the run: must equal `packets`/`bytes`.
    pub kernel: Counter,
}

/// Runs every record of the capture at `path` through the kernel program for
/// `expression` (compiled for the file, as `tcpdump -r`). `each` sees every record and
/// its verdict.
pub fn run_capture(
    path: &Path,
    expression: &str,
    netmask: u32,
    mut each: impl FnMut(&[u8], Verdict),
) -> Result<(Report, KernelFilter), TestRunError> {
    let mut capture = open_capture(path)?;
    let filter = Filter::for_capture(&capture, expression, netmask)?;
    let mut kernel = KernelFilter::load(&filter)?;
    let start = kernel.counter()?;
    let mut report = Report::default();
    loop {
        let packet = match capture.next_packet() {
            Ok(packet) => packet,
            Err(pcap::Error::NoMorePackets) => break,
            Err(source) => {
                return Err(TestRunError::Read {
                    path: path.display().to_string(),
                    record: report.records + 1,
                    source,
                });
            }
        };
        report.records += 1;
        let verdict = kernel.run(packet.data)?;
        match verdict {
            Verdict::Match => {
                report.packets += 1;
                report.bytes += packet.data.len() as u64;
            }
            Verdict::NoMatch => {}
            Verdict::NotRunnable => report.not_runnable += 1,
        }
        each(packet.data, verdict);
    }
    report.replayed = kernel.replayed();
    let end = kernel.counter()?;
    report.kernel = Counter {
        packets: end.packets - start.packets,
        bytes: end.bytes - start.bytes,
    };
    Ok((report, kernel))
}
