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

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::sys::SyscallError;

use crate::cbpf::Program;
use crate::counters::{Counter, CounterError, CounterMap};
use crate::filter::{Filter, FilterError, open_capture};
use crate::insn::Insn;
use crate::program::{LoadError, LoadedProgram, MapBinding};
use crate::replay::EgressReplay;
use crate::translate::{CounterSlot, Hook, empty_program, translate};

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
    /// Said in the message, not also chained (see [`crate::errors`]).
    #[error("cannot translate the filter: {0}")]
    Translate(crate::translate::TranslateError),
    #[error(
        "BPF_PROG_RUN of program {program} on a {len}-byte record failed: {}",
        crate::errors::with_causes(.cause)
    )]
    Run {
        program: String,
        len: usize,
        cause: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error("reading record {record} of {path}: {cause}")]
    Read {
        path: String,
        record: u64,
        cause: pcap::Error,
    },
}

impl From<crate::translate::TranslateError> for TestRunError {
    fn from(cause: crate::translate::TranslateError) -> Self {
        TestRunError::Translate(cause)
    }
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

/// The loaded program as aya sees it, for test runs.
enum Runner {
    Tc(SchedClassifier),
    Xdp(Xdp),
}

impl Runner {
    /// aya's view of `program`, loaded for `hook` (XDP, or SCHED_CLS for the rest).
    fn of(program: &LoadedProgram, hook: Hook) -> Result<Self, LoadError> {
        Ok(match hook {
            Hook::Xdp => Runner::Xdp(program.xdp()?),
            _ => Runner::Tc(program.sched_classifier()?),
        })
    }

    /// One `BPF_PROG_RUN` on `frame`.
    fn run(&self, frame: &[u8]) -> Result<(), ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        match self {
            Runner::Tc(p) => p.test_run(opts).map(|_| ()),
            Runner::Xdp(p) => p.test_run(opts).map(|_| ()),
        }
    }
}

/// A generated counting program, loaded, with its one-slot counter map.
pub struct KernelFilter {
    insns: Vec<Insn>,
    program: LoadedProgram,
    runner: Runner,
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

    /// Translates and loads any validated classic program for the TC hook.
    pub fn load_program(classic: &Program) -> Result<Self, TestRunError> {
        Self::load_for(classic, Hook::TcIngress)
    }

    /// Translates and loads a classic program for `hook`. A socket filter's code is
    /// loaded as `SCHED_CLS`: `SOCKET_FILTER` test runs hand the program the packet from
    /// its network header, while a packet socket's filter (and `SCHED_CLS`) sees it from
    /// the Ethernet header; the code uses nothing `SCHED_CLS` lacks.
    pub fn load_for(classic: &Program, hook: Hook) -> Result<Self, TestRunError> {
        let counters = CounterMap::create("capstats_test", 1)?;
        let insns = translate(classic, hook, CounterSlot { map: 0, slot: 0 })?;
        let loaded_as = match hook {
            Hook::Socket => Hook::TcIngress,
            other => other,
        };
        let maps = MapBinding::counters([&counters]);
        let program = LoadedProgram::load_with(loaded_as, "capstats_test", &insns, &maps)?;
        let runner = Runner::of(&program, hook)?;
        let mut this = Self {
            insns,
            program,
            runner,
            counters,
            max_frame: harness_max_frame(hook)?,
            last: Counter::default(),
            replay: None,
            replayed: 0,
        };
        this.rebase()?;
        Ok(this)
    }

    /// The eBPF program, its labels resolved, counting into [`MapRef::Counters`]`(0)`.
    ///
    /// [`MapRef::Counters`]: crate::insn::MapRef::Counters
    pub fn insns(&self) -> &[Insn] {
        &self.insns
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
            self.runner.run(frame)
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
                let Runner::Tc(classifier) = &mut self.runner else {
                    // XDP frames beyond the harness's frags exist on no link either.
                    return Ok(Verdict::NotRunnable);
                };
                if self.replay.is_none() {
                    self.replay = Some(EgressReplay::new(classifier)?);
                }
                self.replay.as_ref().expect("set above").send(frame)?;
                self.replayed += 1;
            }
            Err(cause) => {
                return Err(TestRunError::Run {
                    program: self.program.name().to_owned(),
                    len: frame.len(),
                    cause,
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

    /// Resets the baseline the next verdict is measured from.
    fn rebase(&mut self) -> Result<(), TestRunError> {
        self.last = self.counters.read(0)?;
        Ok(())
    }
}

/// The largest frame the kernel's test harness accepts on this machine for `hook`
/// (for skb hooks a page less the skb's head- and tailroom; for XDP, a page plus the
/// frags of a multi-buffer frame), found once by bisection with a program that does
/// nothing.
pub fn harness_max_frame(hook: Hook) -> Result<usize, TestRunError> {
    static TC: OnceLock<usize> = OnceLock::new();
    static XDP: OnceLock<usize> = OnceLock::new();
    let cell = if hook == Hook::Xdp { &XDP } else { &TC };
    if let Some(max) = cell.get() {
        return Ok(*max);
    }
    let hook = if hook == Hook::Xdp {
        Hook::Xdp
    } else {
        Hook::TcIngress
    };
    let program = LoadedProgram::load(hook, "capstats_probe", &empty_program(hook))?;
    let runner = Runner::of(&program, hook)?;
    let fits = |len: usize| runner.run(&vec![0u8; len]).is_ok();
    let (mut ok, mut too_big) = (MIN_FRAME, 1 << 20);
    while too_big - ok > 1 {
        let mid = (ok + too_big) / 2;
        if fits(mid) { ok = mid } else { too_big = mid }
    }
    Ok(*cell.get_or_init(|| ok))
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
/// `expression` (compiled for the file, as `tcpdump -r`) made for `hook` (`TcIngress` for
/// the socket filter's code). `each` sees every record and
/// its verdict.
pub fn run_capture(
    path: &Path,
    expression: &str,
    netmask: u32,
    hook: Hook,
    mut each: impl FnMut(&[u8], Verdict),
) -> Result<(Report, KernelFilter), TestRunError> {
    let mut capture = open_capture(path)?;
    let filter = Filter::for_capture(&capture, expression, netmask)?;
    let mut kernel = KernelFilter::load_for(filter.program(), hook)?;
    let start = kernel.counter()?;
    let mut report = Report::default();
    loop {
        let packet = match capture.next_packet() {
            Ok(packet) => packet,
            Err(pcap::Error::NoMorePackets) => break,
            Err(cause) => {
                return Err(TestRunError::Read {
                    path: path.display().to_string(),
                    record: report.records + 1,
                    cause,
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
