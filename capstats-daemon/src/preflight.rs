//! Every filter is compiled by a helper process, against a time limit, outside the
//! service's lock.
//!
//! libpcap's compiler grows faster than the square of an expression's terms and its
//! optimizer about with their cube: 200 `or`ed hosts compile in 0.3 s, 600 in 9 s,
//! 2,000 (37 KB, well within a request line) in 8 minutes; 400 `or`ed port ranges take
//! 6 s. Names in an expression are resolved (DNS) while it compiles. A compile in the
//! daemon cannot be stopped, so each expression is compiled by a helper process (this
//! binary again, see [`helper`]) that is killed when it takes longer than
//! [`COMPILE_LIMIT`]. The helper compiles for the session's interface and hook, as the
//! session will count, and answers libpcap's program or libpcap's reason for refusing
//! it; the daemon validates the program and hands it, as a [`Compiled`], to the
//! request, restore or resume that uses it. Nothing is compiled twice, and nothing is
//! compiled while the session table is locked.
//!
//! Helpers live on between jobs: a job and its answer are a JSON line each way. A
//! helper that answered waits for the next job (a few of them at most, the one that
//! compiled for the job's interface chosen first); one past the limit is killed, one
//! that ended or answered nonsense is let go, and one more is started when every
//! waiting one is busy (clients and the restore compile at once). Most of a compile
//! was starting the helper and opening its live handle on the interface (the packet
//! socket's ring alone waits for an RCU grace period): a helper keeps the handle it
//! opened for each interface name ([`KEPT_HANDLES`] at most) and compiles the next
//! filters there on it, as long as the name still has the index the handle is bound
//! to (an interface made again or renamed gets a new one). A kept handle is made deaf
//! once its answer is out, so that it costs the interface's packets nothing. The
//! program is the one a handle opened for the job would give: libpcap's compile
//! depends only on the activation (link type, VLAN and packet-type loads) and the
//! interface's netmask, looked up for each job.

use std::io::{BufRead, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use capstats_common::protocol::{ErrorKind, HookName};
use capstats_ebpf::cbpf::{ClassicError, Program, RawInsn};
use capstats_ebpf::filter::{ANY, FilterError, LiveHandle};
use serde::{Deserialize, Serialize};

use crate::session::{self, Compiled, SessionError};

/// How long libpcap may take to compile an expression.
pub const COMPILE_LIMIT: Duration = Duration::from_secs(5);

/// The helper's first argument: `capstats __compile-filter`, a [`Job`] on stdin.
pub const HELPER_ARG: &str = "__compile-filter";

/// What the helper compiles: an expression for an interface and hook.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    interface: String,
    hook: HookName,
    expression: String,
}

/// What the helper answers: libpcap's program, or why libpcap did not compile the
/// expression there, with the protocol's error kind.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// `code`, `jt`, `jf`, `k` of each classic instruction.
    Program(Vec<(u16, u8, u8, u32)>),
    Refused {
        kind: ErrorKind,
        message: String,
    },
}

/// Why a filter was not compiled: libpcap's reason as the helper gave it, the time
/// limit, a helper that could not run or answered nonsense, or a program the session
/// cannot count with. `whose` names the filter (`session "web"`).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// libpcap refused the expression there; the helper's words and kind, as given.
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
    #[error(
        "the filter expression of {whose} ({bytes} bytes) takes libpcap longer than {} s to \
         compile (the limit; its compile time grows with the cube of the terms): use fewer \
         terms, or split it into several sessions",
        limit.as_secs_f64()
    )]
    TooSlow {
        whose: String,
        bytes: usize,
        limit: Duration,
    },
    #[error("cannot {what} the helper that compiles the filter of {whose}: {cause}")]
    Helper {
        whose: String,
        what: &'static str,
        cause: std::io::Error,
    },
    #[error(
        "the helper that compiles the filter of {whose} ended ({status}) and answered {reason}"
    )]
    Answer {
        whose: String,
        /// How it ended (`exit status: 1`), as std prints it.
        status: String,
        reason: BadAnswer,
    },
    /// libpcap's program, which the session cannot count with there.
    #[error(transparent)]
    Program(Box<SessionError>),
    /// Not compiled: no interface of the name is there.
    #[error("no interface named {interface:?}")]
    UnknownInterface { interface: String },
    /// The compiler thread ended without an answer.
    #[error("its compiler stopped")]
    CompilerStopped,
}

/// What was wrong with a helper's answer that gave neither a program nor libpcap's
/// reason: printed in [`CompileError::Answer`]'s words (`... and answered {reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    /// Bytes that are no [`Answer`] (an empty or cut output, a helper that crashed).
    #[error("{bytes} bytes, not an answer ({reason})")]
    NotAnAnswer { bytes: usize, reason: String },
    /// libpcap's program, which fails the kernel's classic rules: validated, not trusted.
    #[error("a program the daemon refuses: {0}")]
    Invalid(ClassicError),
}

impl CompileError {
    /// The protocol's kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CompileError::Refused { kind, .. } => *kind,
            CompileError::TooSlow { .. } => ErrorKind::InvalidFilter,
            CompileError::Helper { .. }
            | CompileError::Answer { .. }
            | CompileError::CompilerStopped => ErrorKind::Internal,
            CompileError::Program(cause) => cause.kind(),
            CompileError::UnknownInterface { .. } => ErrorKind::UnknownInterface,
        }
    }
}

/// Compiles `expression` for `interface` at `hook` in a helper process stopped after
/// `limit`, and returns the program a session there counts with. `whose` names the
/// filter in errors (`session "web"`).
pub fn compile(
    interface: &str,
    hook: HookName,
    expression: &str,
    whose: &str,
    limit: Duration,
) -> Result<Compiled, CompileError> {
    static HELPERS: LazyLock<Helpers> = LazyLock::new(|| {
        Helpers::new(|| {
            let mut command = Command::new("/proc/self/exe");
            command.arg(HELPER_ARG);
            command
        })
    });
    let job = Job {
        interface: interface.to_owned(),
        hook,
        expression: expression.to_owned(),
    };
    let program = HELPERS.compile(&job, whose, limit)?;
    Compiled::new(interface, hook, expression, &program)
        .map_err(|cause| CompileError::Program(Box::new(cause)))
}

/// How many helpers wait for jobs at most: the restore's [`COMPILERS`] and a client.
/// Each keeps up to [`KEPT_HANDLES`] live handles.
///
/// [`COMPILERS`]: crate::service::compiler::COMPILERS
const IDLE_HELPERS: usize = 3;

/// How many interfaces a helper remembers having compiled for, to be chosen for a job
/// on one of them (it likely keeps its live handle there): as many as it keeps.
const REMEMBERED: usize = KEPT_HANDLES;

/// The helper processes: those waiting for a job, and the thread that starts them.
struct Helpers {
    /// The command that starts one (`/proc/self/exe __compile-filter`).
    command: Box<dyn Fn() -> Command + Send + Sync>,
    /// The most recently back last.
    idle: Mutex<Vec<Helper>>,
    /// Asks the thread that starts helpers for one (see [`Helpers::spawn`]).
    spawner: Mutex<Option<mpsc::Sender<Spawn>>>,
}

/// What came of waiting for a helper's line.
enum Output {
    /// A line, without its newline.
    Line(Vec<u8>),
    /// Its output ended first, after these bytes.
    Ended(Vec<u8>),
    /// None by the deadline.
    Late,
}

/// A request to the thread that starts helpers: the command, and where its child goes.
type Spawn = (Command, mpsc::Sender<std::io::Result<Child>>);

/// A helper process between jobs or on one.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    /// Read on the thread that waits for its answer, as it comes (a large program
    /// does not fit in the pipe).
    stdout: ChildStdout,
    /// What it wrote past the last line read.
    pending: Vec<u8>,
    /// The interfaces it compiled for, the most recent last (at most [`REMEMBERED`]).
    interfaces: Vec<String>,
}

impl Helpers {
    fn new(command: impl Fn() -> Command + Send + Sync + 'static) -> Self {
        Self {
            command: Box::new(command),
            idle: Mutex::new(Vec::new()),
            spawner: Mutex::new(None),
        }
    }

    /// `job`'s answer from a helper that waits for jobs (one that kept a live handle
    /// on the job's interface if there is one) or a new one, within `limit`. A helper
    /// past the limit is killed; one that answered goes back to wait for the next job,
    /// one that answered nonsense or ended does not.
    fn compile(&self, job: &Job, whose: &str, limit: Duration) -> Result<Program, CompileError> {
        let start = Instant::now();
        let failed = |what: &'static str, cause: std::io::Error| CompileError::Helper {
            whose: whose.to_owned(),
            what,
            cause,
        };
        let mut line = serde_json::to_vec(job).map_err(|e| failed("encode a job for", e.into()))?;
        line.push(b'\n');
        let send = |helper: &mut Helper| {
            helper
                .stdin
                .write_all(&line)
                .and_then(|()| helper.stdin.flush())
        };
        let waiting = self.take_idle(&job.interface).and_then(|mut helper| {
            match send(&mut helper) {
                Ok(()) => Some(helper),
                // It ended since it was taken (killed by someone): a new one.
                Err(_) => {
                    helper.kill();
                    None
                }
            }
        });
        let mut helper = match waiting {
            Some(helper) => helper,
            None => {
                let mut helper = self.spawn().map_err(|e| failed("start", e))?;
                if let Err(e) = send(&mut helper) {
                    helper.kill();
                    return Err(failed("write to", e));
                }
                helper
            }
        };
        let too_slow = || CompileError::TooSlow {
            whose: whose.to_owned(),
            bytes: job.expression.len(),
            limit,
        };
        let output = match helper.read_line(start + limit) {
            Output::Line(line) => line,
            Output::Late => {
                helper.kill();
                return Err(too_slow());
            }
            // Its output ended without a line: what came, and what its status says.
            Output::Ended(bytes) => bytes,
        };
        match decode(&output, whose, None) {
            Err(CompileError::Answer { whose, reason, .. }) => {
                // Not an answer: the helper is done with, and its input closed (a
                // helper ends with it). Say how it ended.
                let Helper {
                    mut child, stdin, ..
                } = helper;
                drop(stdin);
                let status = loop {
                    if let Some(status) = child.try_wait().map_err(|e| failed("wait for", e))? {
                        break status;
                    }
                    if start.elapsed() >= limit {
                        let _ = child.kill();
                        reap(child);
                        return Err(too_slow());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                Err(CompileError::Answer {
                    whose,
                    status: status.to_string(),
                    reason,
                })
            }
            answered => {
                helper.remember(&job.interface);
                self.put_back(helper);
                answered
            }
        }
    }

    /// A helper waiting for a job that is still running: the most recent one that
    /// compiled for `interface`, else the most recent one.
    fn take_idle(&self, interface: &str) -> Option<Helper> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let at = idle
                .iter()
                .rposition(|h| h.interfaces.iter().any(|i| i == interface))
                .or_else(|| idle.len().checked_sub(1))?;
            let mut helper = idle.remove(at);
            // One that ended while it waited (killed by someone) is let go.
            match helper.child.try_wait() {
                Ok(None) => return Some(helper),
                Ok(Some(_)) => {}
                Err(_) => helper.kill(),
            }
        }
    }

    /// `helper`, which answered, back to wait for a job; let go when enough wait.
    fn put_back(&self, helper: Helper) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_HELPERS {
            idle.push(helper);
        } else {
            drop(idle);
            helper.retire();
        }
    }

    /// A new helper, started by the thread that starts every helper: a helper dies
    /// (`PR_SET_PDEATHSIG`) when the thread that started it ends, and the threads that
    /// compile come and go while helpers wait for jobs. That thread ends with
    /// `self` (never, for the daemon's), and its helpers with it.
    fn spawn(&self) -> std::io::Result<Helper> {
        let mut command = (self.command)();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // A daemon that dies takes its helpers along.
        crate::sys::process::die_with_parent(&mut command);
        let (reply, spawned) = mpsc::channel();
        {
            let mut spawner = self.spawner.lock().unwrap_or_else(|p| p.into_inner());
            let sender = match &mut *spawner {
                Some(sender) => sender,
                None => spawner.insert(start_spawner()?),
            };
            sender
                .send((command, reply))
                .map_err(|_| std::io::Error::other("the thread that starts helpers ended"))?;
        }
        let mut child = spawned
            .recv()
            .map_err(|_| std::io::Error::other("the thread that starts helpers ended"))??;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            reap(child);
            return Err(std::io::Error::other("no pipes to the helper"));
        };
        Ok(Helper {
            child,
            stdin,
            stdout,
            pending: Vec::new(),
            interfaces: Vec::new(),
        })
    }

    /// The process ids of the helpers waiting for a job.
    #[cfg(test)]
    fn idle_pids(&self) -> Vec<u32> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.iter().map(|h| h.child.id()).collect()
    }
}

/// The thread that starts helpers, for [`Helpers::spawn`]: it lives until its sender
/// is dropped.
fn start_spawner() -> std::io::Result<mpsc::Sender<Spawn>> {
    let (sender, requests) = mpsc::channel::<Spawn>();
    std::thread::Builder::new()
        .name("capstats-helpers".into())
        .spawn(move || {
            for (mut command, reply) in requests {
                let _ = reply.send(command.spawn());
            }
        })?;
    Ok(sender)
}

impl Helper {
    /// Its next line, read as it comes until `deadline`: on the caller's thread, so
    /// that a helper waiting for a job costs the daemon no thread.
    fn read_line(&mut self, deadline: Instant) -> Output {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                return Output::Line(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match crate::sys::process::wait_readable(&self.stdout, left) {
                Ok(true) => {}
                Ok(false) => return Output::Late,
                Err(_) => return Output::Ended(std::mem::take(&mut self.pending)),
            }
            let mut chunk = vec![0; 64 * 1024];
            match self.stdout.read(&mut chunk) {
                Ok(0) | Err(_) => return Output::Ended(std::mem::take(&mut self.pending)),
                Ok(read) => self.pending.extend_from_slice(&chunk[..read]),
            }
        }
    }

    /// Notes that it compiled for `interface`.
    fn remember(&mut self, interface: &str) {
        self.interfaces.retain(|i| i != interface);
        self.interfaces.push(interface.to_owned());
        if self.interfaces.len() > REMEMBERED {
            self.interfaces.remove(0);
        }
    }

    /// Kills it, and waits for it off the caller's path.
    fn kill(mut self) {
        let _ = self.child.kill();
        reap(self.child);
    }

    /// Closes its input, which ends it, and waits for it off the caller's path.
    fn retire(self) {
        drop(self.stdin);
        reap(self.child);
    }
}

/// Waits for a helper that was killed or whose input was closed to end, off the
/// caller's path: it closes the live handles it kept, which takes the kernel about
/// 30 ms each (RCU grace periods of each handle's packet socket). On the runtime's
/// blocking threads when there is a runtime (their number is bounded), else on a
/// thread of its own.
fn reap(mut child: Child) {
    let wait = move || {
        let _ = child.wait();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(wait)),
        Err(_) => drop(std::thread::spawn(wait)),
    }
}

/// libpcap's program as the helper writes it.
fn encode(raw: &[RawInsn]) -> Answer {
    Answer::Program(raw.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
}

/// The answer of the helper for `whose`, which ended with `status`: libpcap's program,
/// validated as any classic program is; libpcap's reason for refusing the expression,
/// with its kind ([`CompileError::Refused`]); or an answer that is neither
/// ([`CompileError::Answer`]).
fn decode(
    bytes: &[u8],
    whose: &str,
    status: Option<std::process::ExitStatus>,
) -> Result<Program, CompileError> {
    let bad = |reason| CompileError::Answer {
        whose: whose.to_owned(),
        status: status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
        reason,
    };
    let answer: Answer = serde_json::from_slice(bytes).map_err(|e| {
        bad(BadAnswer::NotAnAnswer {
            bytes: bytes.len(),
            reason: e.to_string(),
        })
    })?;
    let raw = match answer {
        Answer::Refused { kind, message } => {
            return Err(CompileError::Refused { kind, message });
        }
        Answer::Program(raw) => raw,
    };
    let raw: Vec<RawInsn> = raw
        .into_iter()
        .map(|(code, jt, jf, k)| RawInsn::new(code, jt, jf, k))
        .collect();
    Program::new(&raw).map_err(|e| bad(BadAnswer::Invalid(e)))
}

/// How many live handles a helper keeps, the least recently used let go past it: each
/// holds a packet socket and its ring (one frame of the snapshot length, 256 KiB), so
/// a helper holds 4 MiB at most. Restores compile interface by interface.
const KEPT_HANDLES: usize = 16;

/// `capstats __compile-filter`: compiles each [`Job`] on stdin, one JSON object a line,
/// and writes an [`Answer`] line to stdout for each: libpcap's program, or why libpcap
/// did not compile it there. Ends with its input.
pub fn helper() -> std::process::ExitCode {
    let mut handles = KeptHandles::default();
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().split(b'\n') {
        let Ok(line) = line else {
            return std::process::ExitCode::FAILURE;
        };
        let Ok(job) = serde_json::from_slice::<Job>(&line) else {
            return std::process::ExitCode::FAILURE;
        };
        let answer = match handles.compile(&job) {
            Ok(filter) => encode(filter.raw()),
            Err(e) => {
                let e = SessionError::from(e);
                Answer::Refused {
                    kind: e.kind(),
                    message: e.to_string(),
                }
            }
        };
        let Ok(mut bytes) = serde_json::to_vec(&answer) else {
            return std::process::ExitCode::FAILURE;
        };
        bytes.push(b'\n');
        if stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return std::process::ExitCode::FAILURE;
        }
        // After the answer, off the daemon's path: both take the kernel an RCU grace
        // period or more.
        handles.settle();
    }
    std::process::ExitCode::SUCCESS
}

/// The live handles a helper keeps, one per interface name, to compile the next
/// filters there without opening one each time (~15 ms, most of a compile): each
/// made deaf ([`LiveHandle::stop_receiving`]) once the answer it was opened for is
/// out, at most [`KEPT_HANDLES`].
#[derive(Default)]
struct KeptHandles {
    /// The least recently used first.
    kept: Vec<Kept>,
    /// Handles no longer kept, closed once the answer is out.
    closing: Vec<LiveHandle>,
}

struct Kept {
    handle: LiveHandle,
    /// Made deaf.
    deaf: bool,
}

impl KeptHandles {
    /// `job` compiled on the handle kept for its interface, if that is still the
    /// interface of that name (same index, still bound to it: not deleted and made
    /// again, nor renamed away), else on a handle opened now and kept.
    fn compile(&mut self, job: &Job) -> Result<capstats_ebpf::filter::Filter, FilterError> {
        // `any` is cooked to LINUX_SLL2 for the socket hook; the other hooks refuse it
        // (before a job is sent, too), saying libpcap's own link type: a handle of
        // its own, not kept.
        if job.interface == ANY && job.hook != HookName::Socket {
            let mut handle = LiveHandle::open(&job.interface)?;
            let compiled = session::libpcap_filter_on(&mut handle, job.hook, &job.expression);
            self.closing.push(handle);
            return compiled;
        }
        // The handle compiled on goes last: the most recently used.
        match self
            .kept
            .iter()
            .position(|k| k.handle.interface() == job.interface)
        {
            Some(at) => {
                let kept = self.kept.remove(at);
                if still_there(&kept.handle) {
                    self.kept.push(kept);
                } else {
                    self.closing.push(kept.handle);
                    self.open(&job.interface)?;
                }
            }
            None => self.open(&job.interface)?,
        }
        let kept = self.kept.last_mut().expect("a handle was just kept");
        session::libpcap_filter_on(&mut kept.handle, job.hook, &job.expression)
    }

    /// Opens a handle on `interface`, kept as the most recently used.
    fn open(&mut self, interface: &str) -> Result<(), FilterError> {
        self.kept.push(Kept {
            handle: LiveHandle::open(interface)?,
            deaf: false,
        });
        Ok(())
    }

    /// Makes the handles opened for the last answer deaf (a handle that cannot be is
    /// not kept), lets the least recently used go past [`KEPT_HANDLES`], and closes
    /// those let go.
    fn settle(&mut self) {
        let mut at = 0;
        while at < self.kept.len() {
            let kept = &mut self.kept[at];
            if !kept.deaf && kept.handle.stop_receiving().is_err() {
                self.closing.push(self.kept.remove(at).handle);
                continue;
            }
            kept.deaf = true;
            at += 1;
        }
        let past = self.kept.len().saturating_sub(KEPT_HANDLES);
        self.closing
            .extend(self.kept.drain(..past).map(|kept| kept.handle));
        self.closing.clear();
    }
}

/// Whether `handle`'s interface is still the one of its name: the name has the index
/// the handle's socket is bound to (`any`: 0).
fn still_there(handle: &LiveHandle) -> bool {
    let named = crate::attach::ifindex(handle.interface());
    let bound = handle.bound_ifindex().ok();
    named.is_some() && named.and_then(|i| i32::try_from(i).ok()) == bound
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// The time limit's refusal, word for word as clients got it before it was typed.
    #[test]
    fn a_filter_too_slow_to_compile_is_an_invalid_filter_saying_why() {
        let error = CompileError::TooSlow {
            whose: "session \"web\"".into(),
            bytes: 37_000,
            limit: COMPILE_LIMIT,
        };
        assert_eq!(error.kind(), ErrorKind::InvalidFilter);
        assert_eq!(
            error.to_string(),
            "the filter expression of session \"web\" (37000 bytes) takes libpcap longer \
             than 5 s to compile (the limit; its compile time grows with the cube of the \
             terms): use fewer terms, or split it into several sessions"
        );
    }

    /// Helpers that are `sh` scripts: `script` reads the job lines.
    fn scripted(script: &'static str) -> Helpers {
        Helpers::new(move || {
            let mut command = Command::new("sh");
            command.args(["-c", script]);
            command
        })
    }

    fn job(interface: &str) -> Job {
        Job {
            interface: interface.into(),
            hook: HookName::Socket,
            expression: "udp".into(),
        }
    }

    /// Whether process `pid` is gone (reaped, not even a zombie), within a second.
    fn gone(pid: u32) -> bool {
        let path = format!("/proc/{pid}");
        let deadline = Instant::now() + Duration::from_secs(1);
        while std::path::Path::new(&path).exists() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn a_helper_that_answered_serves_the_next_job_and_the_one_that_kept_its_interface_is_chosen() {
        let helpers = scripted(r#"while read -r job; do echo '{"Program":[[6,0,0,0]]}'; done"#);
        let limit = Duration::from_secs(5);
        assert_eq!(
            helpers.compile(&job("a"), "session \"a\"", limit).unwrap(),
            Program::new(&[RawInsn::new(0x06, 0, 0, 0)]).unwrap()
        );
        let first = helpers.idle_pids();
        assert_eq!(first.len(), 1, "{first:?}");
        helpers.compile(&job("b"), "session \"b\"", limit).unwrap();
        assert_eq!(helpers.idle_pids(), first, "a second helper was started");
        // Two at once: a second helper; both wait afterwards.
        std::thread::scope(|scope| {
            let mut taken = helpers.take_idle("a").unwrap();
            let other = scope.spawn(|| helpers.compile(&job("c"), "session \"c\"", limit));
            other.join().unwrap().unwrap();
            taken.remember("a");
            helpers.put_back(taken);
        });
        let both = helpers.idle_pids();
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(both[1], first[0]);
        // "c"'s helper compiled last, yet "b"'s is chosen for "b".
        let chosen = helpers.take_idle("b").unwrap();
        assert_eq!(chosen.child.id(), first[0]);
        helpers.put_back(chosen);
        assert_eq!(helpers.take_idle("nowhere").unwrap().child.id(), first[0]);
    }

    #[test]
    fn no_more_than_a_few_helpers_wait_and_those_let_go_end() {
        let helpers = scripted(r#"while read -r job; do echo '{"Program":[[6,0,0,0]]}'; done"#);
        let taken: Vec<Helper> = (0..IDLE_HELPERS + 1)
            .map(|_| helpers.spawn().unwrap())
            .collect();
        let last = taken.last().unwrap().child.id();
        for helper in taken {
            helpers.put_back(helper);
        }
        assert_eq!(helpers.idle_pids().len(), IDLE_HELPERS);
        assert!(!helpers.idle_pids().contains(&last));
        assert!(gone(last), "helper {last} let go still runs");
    }

    #[test]
    fn a_helper_too_slow_is_killed_and_the_next_job_gets_another() {
        // Takes 30 s for a job whose expression says "slow".
        let helpers = scripted(
            r#"while read -r job; do
                case "$job" in *slow*) sleep 30;; esac
                echo '{"Program":[[6,0,0,0]]}'
            done"#,
        );
        let helper = helpers.spawn().unwrap();
        let slow_pid = helper.child.id();
        helpers.put_back(helper);
        let slow = Job {
            expression: "slow".into(),
            ..job("a")
        };
        let started = Instant::now();
        let error = helpers
            .compile(&slow, "session \"a\"", Duration::from_millis(300))
            .unwrap_err();
        assert!(
            matches!(&error, CompileError::TooSlow { bytes: 4, .. }),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            gone(slow_pid),
            "helper {slow_pid}, past the limit, still runs"
        );
        assert!(helpers.idle_pids().is_empty(), "{:?}", helpers.idle_pids());
        helpers
            .compile(&job("a"), "session \"a\"", Duration::from_secs(5))
            .unwrap();
        assert_eq!(helpers.idle_pids().len(), 1);
    }

    #[test]
    fn a_waiting_helper_killed_by_someone_is_replaced() {
        let helpers = scripted(r#"while read -r job; do echo '{"Program":[[6,0,0,0]]}'; done"#);
        let helper = helpers.spawn().unwrap();
        let killed = helper.child.id();
        helpers.put_back(helper);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(killed as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Dead (a zombie until reaped), whether or not it is seen to be.
        let state = || std::fs::read_to_string(format!("/proc/{killed}/stat")).unwrap();
        while !state().contains(") Z ") {
            std::thread::sleep(Duration::from_millis(1));
        }
        helpers
            .compile(&job("a"), "session \"a\"", Duration::from_secs(5))
            .unwrap();
        let now = helpers.idle_pids();
        assert!(now.len() == 1 && now[0] != killed, "{now:?}");
        assert!(gone(killed), "the killed helper {killed} was not reaped");
    }

    #[test]
    fn a_helper_that_ends_or_answers_nonsense_says_how_and_is_not_kept() {
        let limit = Duration::from_secs(5);
        let error = scripted("read -r job; exit 3")
            .compile(&job("a"), "session \"a\"", limit)
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert!(
            error.to_string().starts_with(
                "the helper that compiles the filter of session \"a\" ended (exit status: 3) \
                 and answered 0 bytes, not an answer ("
            ),
            "{error}"
        );
        let helpers = scripted("read -r job; echo nonsense; read -r job; exit 4");
        let error = helpers
            .compile(&job("a"), "session \"a\"", limit)
            .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "the helper that compiles the filter of session \"a\" ended (exit status: 4) \
                 and answered 8 bytes, not an answer ("
            ),
            "{error}"
        );
        assert!(helpers.idle_pids().is_empty());
        // A refusal is an answer: the helper is kept.
        let helpers = scripted(
            r#"while read -r job; do echo '{"Refused":{"kind":"invalid_filter","message":"no"}}'; done"#,
        );
        let error = helpers
            .compile(&job("a"), "session \"a\"", limit)
            .unwrap_err();
        assert!(matches!(&error, CompileError::Refused { message, .. } if message == "no"));
        assert_eq!(helpers.idle_pids().len(), 1);
    }

    #[test]
    fn the_helpers_answer_decodes_to_the_program_it_encoded() {
        // ldh [12]; jeq #0x800, 0, 1; ret #262144; ret #0
        let raw = [
            RawInsn::new(0x28, 0, 0, 12),
            RawInsn::new(0x15, 0, 1, 0x800),
            RawInsn::new(0x06, 0, 0, 0x40000),
            RawInsn::new(0x06, 0, 0, 0),
        ];
        let exited = std::process::ExitStatus::from_raw(0);
        let decode = |bytes: &[u8]| decode(bytes, "session \"web\"", Some(exited));
        let bytes = serde_json::to_vec(&encode(&raw)).unwrap();
        assert_eq!(decode(&bytes).unwrap(), Program::new(&raw).unwrap());
        // A cut answer, an empty one: refused, an internal error saying what came.
        for (cut, len) in [(&bytes[..7], 7), (&[][..], 0)] {
            let error = decode(cut).unwrap_err();
            assert!(
                matches!(
                    &error,
                    CompileError::Answer {
                        reason: BadAnswer::NotAnAnswer { bytes, .. },
                        ..
                    } if *bytes == len
                ),
                "{error:?}"
            );
            assert_eq!(error.kind(), ErrorKind::Internal);
            let prefix = format!(
                "the helper that compiles the filter of session \"web\" ended (exit status: \
                 0) and answered {len} bytes, not an answer ("
            );
            assert!(error.to_string().starts_with(&prefix), "{error}");
        }
        // A jump past the end: validated, not trusted.
        let mut bad = raw;
        bad[1] = RawInsn::new(0x15, 9, 1, 0x800);
        let bytes = serde_json::to_vec(&encode(&bad)).unwrap();
        let error = decode(&bytes).unwrap_err();
        let CompileError::Answer {
            reason: BadAnswer::Invalid(cause),
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert_eq!(
            error.to_string(),
            format!(
                "the helper that compiles the filter of session \"web\" ended (exit status: \
                 0) and answered a program the daemon refuses: {cause}"
            )
        );
        // libpcap's reason, carried as it was given.
        let refused = Answer::Refused {
            kind: ErrorKind::InvalidFilter,
            message: "syntax error".into(),
        };
        let bytes = serde_json::to_vec(&refused).unwrap();
        let error = decode(&bytes).unwrap_err();
        assert!(
            matches!(
                &error,
                CompileError::Refused { kind: ErrorKind::InvalidFilter, message }
                    if message == "syntax error"
            ),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "syntax error");
    }
}
