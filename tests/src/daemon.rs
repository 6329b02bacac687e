//! The real `capstats` binary as a daemon and as its client.
//!
//! [`Daemon`] runs `capstats -d -s SOCKET --state-dir DIR` inside a test's network
//! namespace (so that whatever it opens, and the interface it would pick by default,
//! are the namespace's), through the launcher the bench uses too
//! ([`capstats_testkit::launch::start_daemon`]): it waits until the socket answers, keeps the
//! daemon's log in a file, and stops it on drop: SIGTERM, then SIGKILL if it has not
//! gone within [`STOP_TIMEOUT`]. Dropping it prints the log to stderr, which the test harness
//! shows when the test fails (an error or a panic).
//!
//! [`Client`] runs `capstats -s SOCKET [--json] ARGS...`, as root or as another account
//! (`setpriv`), and returns the exit code and both outputs ([`Outcome`]). The socket is
//! a file, so the client runs in the host's namespace and still reaches the daemon.
//!
//! The binary is `target/<profile>/capstats`, built by `cargo build -p capstats-cli`
//! (`cargo xtask test` builds it): [`binary`] finds it next to the test executable.
//!
//! [`rig`] is where these tests run: two namespaces joined by a quiet veth pair.

pub mod metrics;
pub mod rig;
pub mod xdp;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::Session;
use capstats_testkit::launch::{DaemonArgs, Process};

use crate::cmd::command_line;
use crate::netns::NetNs;

pub use capstats_testkit::launch::{START_TIMEOUT, STOP_TIMEOUT};

/// How long one client command may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Packets and bytes.
pub type Count = (u64, u64);

/// A session's packets and bytes.
pub fn counts(session: &Session) -> Count {
    (session.packets.unwrap_or(0), session.bytes.unwrap_or(0))
}

/// Two counts added up.
pub fn add(a: Count, b: Count) -> Count {
    (a.0 + b.0, a.1 + b.1)
}

/// What `n` copies of `frame` count.
pub fn times(frame: &[u8], n: u64) -> Count {
    (n, n * frame.len() as u64)
}

/// The `capstats` binary of the profile the tests were built with.
///
/// # Errors
/// When it is not there: it must be built first.
pub fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in target/<profile>/deps", exe.display()))?;
    let binary = profile_dir.join("capstats");
    ensure!(
        binary.is_file(),
        "the capstats binary is not at {}: build it first (`cargo build -p capstats-cli`, \
         with --release for a release test run; `cargo xtask test` builds everything)",
        binary.display()
    );
    Ok(binary)
}

/// Where a daemon listens and keeps its table, and whom it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Its own pin directory on bpffs, derived from the state directory (so that a
    /// restarted daemon finds its pins), removed by the daemon on a clean stop
    /// (`--detach-on-exit`, unless [`DaemonSpec::keep_pins`]): a test leaves nothing
    /// pinned.
    pub pin_dir: PathBuf,
    /// `-g GROUP`: a group name or number whose members may use the daemon.
    pub group: Option<String>,
    /// Leave `--detach-on-exit` out: a clean stop (SIGTERM) then leaves the pinned
    /// objects, and the TC links among them go on counting, for the next daemon (an
    /// upgrade). Off by default; a test that sets it holds a [`PinDir`] guard so that
    /// nothing stays pinned after it, and stops its last daemon without it.
    pub keep_pins: bool,
    /// A command the daemon is run through, inside the namespace: `prlimit ... --`,
    /// `unshare -m ... --`; it must exec the daemon (same process), so that the
    /// daemon's pid is the child's. Empty by default.
    pub wrapper: Vec<String>,
    /// `--idle-timeout`: how long a client may take to send a whole request (the
    /// daemon's 60 s when `None`).
    pub idle_timeout: Option<Duration>,
    /// Start the daemon as users often do, `ip netns exec NS capstats -d ...`, which
    /// gives it a mount namespace of its own with a fresh `/sys` (so no bpffs there),
    /// rather than `nsenter --net` (the default), which keeps the test's mounts.
    pub ip_netns_exec: bool,
    /// `--metrics ADDR`: serve `/metrics` at this address in the daemon's namespace.
    pub metrics: Option<SocketAddr>,
    /// `--web-config FILE`, with `metrics`.
    pub web_config: Option<PathBuf>,
}

impl DaemonSpec {
    pub fn new(socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        let flat: String = state_dir
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            socket: socket.into(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/capstats-e2e{flat}")),
            state_dir,
            group: None,
            keep_pins: false,
            wrapper: Vec::new(),
            idle_timeout: None,
            ip_netns_exec: false,
            metrics: None,
            web_config: None,
        }
    }

    /// The same daemon started with `ip netns exec` (see [`DaemonSpec::ip_netns_exec`]).
    pub fn under_ip_netns_exec(mut self) -> Self {
        self.ip_netns_exec = true;
        self
    }

    /// The same daemon run through `wrapper` (see [`DaemonSpec::wrapper`]).
    pub fn wrapped(mut self, wrapper: &[impl AsRef<str>]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// The same daemon with `--idle-timeout` (see [`DaemonSpec::idle_timeout`]).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// The same daemon with `-g group`.
    pub fn with_group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// The same daemon with or without `--detach-on-exit` (see [`DaemonSpec::keep_pins`]).
    pub fn keeping_pins(mut self, keep: bool) -> Self {
        self.keep_pins = keep;
        self
    }

    /// The same daemon serving `/metrics` at `addr`, with `--web-config` when given.
    pub fn serving_metrics(mut self, addr: SocketAddr, web_config: Option<&Path>) -> Self {
        self.metrics = Some(addr);
        self.web_config = web_config.map(Path::to_owned);
        self
    }

    /// A guard that removes this daemon's pin directory when dropped (see [`PinDir`]).
    pub fn pin_guard(&self) -> PinDir {
        PinDir::new(&self.pin_dir)
    }

    /// The daemon's flags.
    fn args(&self) -> DaemonArgs {
        DaemonArgs {
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            pin_dir: self.pin_dir.clone(),
            group: self.group.clone(),
            detach_on_exit: !self.keep_pins,
            idle_timeout: self.idle_timeout,
            metrics: self.metrics,
            web_config: self.web_config.clone(),
        }
    }

    /// A client of this daemon, as root.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.socket)
    }
}

// Wrappers ([`DaemonSpec::wrapped`]) that take the daemon out of the test's mounts.

/// `unshare -m` with private propagation, then `script` in sh, then the daemon
/// (`exec "$0" "$@"`: the same process all along, as [`DaemonSpec::wrapper`] needs).
pub fn in_private_mounts(script: &str) -> Vec<String> {
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
        &format!("{script}\nexec \"$0\" \"$@\""),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Unmounts every bpffs stacked at /sys/fs/bpf.
pub const UNMOUNT_BPFFS: &str = "while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done";

/// [`in_private_mounts`], and a pid namespace too, with the daemon in a mount
/// namespace of its own as its pid 1: no bpffs outside its namespace is reachable from
/// it (not pid 1's, which is itself, nor an ancestor's), so it has to mount one. The
/// outer `unshare --fork` waits for it, ignoring SIGTERM: stop it with SIGKILL
/// ([`Daemon::kill`]), which takes the daemon along.
pub fn alone_in_private_mounts(script: &str) -> Vec<String> {
    [
        "unshare",
        "-m",
        "-p",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
        &format!("{script}\nexec unshare -m --propagation private -- \"$0\" \"$@\""),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A daemon's pin directory on bpffs, removed with everything in it when dropped (a
/// test that panics included): pinned links go, so the kernel detaches them, and
/// pinned maps go. For daemons started without `--detach-on-exit`
/// ([`DaemonSpec::keep_pins`]); hold it longer than the daemons, so that it is dropped
/// after them.
///
/// Creating one first removes the pin directories of earlier test processes that are
/// gone (`/sys/fs/bpf/capstats-e2e*` naming a pid that no longer runs), which a test
/// killed before its guards ran leaves behind.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

/// Where [`DaemonSpec::new`] puts pin directories: this prefix, then the flattened
/// state directory (which holds `capstats-e2e-<pid>-`, see [`crate::scratch`]).
const PIN_PREFIX: &str = "/sys/fs/bpf/capstats-e2e";

static PIN_SWEEP: std::sync::Once = std::sync::Once::new();

impl PinDir {
    fn new(path: &Path) -> Self {
        PIN_SWEEP.call_once(sweep_stale_pins);
        Self {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: {} was not removed: {e}", self.path.display()),
        }
    }
}

/// Removes the pin directories of test processes that no longer exist.
fn sweep_stale_pins() {
    let prefix = Path::new(PIN_PREFIX);
    let (Some(parent), Some(stem)) = (prefix.parent(), prefix.file_name()) else {
        return;
    };
    let stem = stem.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&stem) else {
            continue;
        };
        // `..._capstats-e2e-<pid>-<n>-<tag>_...`
        let Some((_, after)) = rest.split_once("capstats-e2e-") else {
            continue;
        };
        let Some(Ok(pid)) = after.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running `capstats -d`, stopped when dropped.
#[derive(Debug)]
pub struct Daemon {
    process: Process,
    spec: DaemonSpec,
    namespace: String,
}

impl Daemon {
    /// Starts the daemon in `ns` with its stdout and stderr going to `log`, and returns
    /// once it answers a `list` on its socket with no session `compiling` (every
    /// restored session's filter compiled).
    ///
    /// # Errors
    /// When it cannot be started, exits, or does not answer so within
    /// [`START_TIMEOUT`]; the error carries its log.
    pub fn start(ns: &NetNs, spec: &DaemonSpec, log: &Path) -> anyhow::Result<Self> {
        let process =
            capstats_testkit::launch::start_daemon(Self::command(ns, spec)?, &spec.args(), log)
                .with_context(|| format!("capstats -d in {}", ns.name()))?;
        Ok(Self::of(process, ns, spec))
    }

    /// Starts the daemon as [`Daemon::start`] does, and returns as soon as it answers
    /// a `list`, restored sessions compiling or not.
    ///
    /// # Errors
    /// As [`Daemon::start`].
    pub fn start_answering(ns: &NetNs, spec: &DaemonSpec, log: &Path) -> anyhow::Result<Self> {
        let process = capstats_testkit::launch::start_daemon_answering(
            Self::command(ns, spec)?,
            &spec.args(),
            log,
        )
        .with_context(|| format!("capstats -d in {}", ns.name()))?;
        Ok(Self::of(process, ns, spec))
    }

    /// Starts the daemon without waiting for it to answer.
    ///
    /// # Errors
    /// When the binary is missing or cannot be started.
    pub fn spawn(ns: &NetNs, spec: &DaemonSpec, log: &Path) -> anyhow::Result<Self> {
        let process =
            capstats_testkit::launch::spawn_daemon(Self::command(ns, spec)?, &spec.args(), log)?;
        Ok(Self::of(process, ns, spec))
    }

    /// Starts a daemon that is expected to refuse to run, and returns how it ended.
    ///
    /// # Errors
    /// When it cannot be started, or is still running after [`START_TIMEOUT`] (it is
    /// then stopped, and its log is in the error).
    pub fn expect_exit(ns: &NetNs, spec: &DaemonSpec, log: &Path) -> anyhow::Result<Outcome> {
        let mut daemon = Self::spawn(ns, spec, log)?;
        match daemon.wait_exit(START_TIMEOUT)? {
            Some(status) => Ok(Outcome {
                code: status.code(),
                stdout: String::new(),
                stderr: daemon.log(),
            }),
            None => bail!(
                "capstats -d in {} was expected to refuse to start, but still runs after \
                 {START_TIMEOUT:?}; its log:\n{}",
                daemon.namespace,
                daemon.log()
            ),
        }
    }

    /// The command that execs the binary in `ns`: `nsenter --net` unless the test asks
    /// for `ip netns exec`, whose private /sys hides the host's bpffs (the daemon must
    /// find one that outlives it), behind the spec's wrapper if any.
    fn command(ns: &NetNs, spec: &DaemonSpec) -> anyhow::Result<Command> {
        let binary = binary()?;
        let binary = binary.to_str().context("the binary's path is not UTF-8")?;
        let enter = |program: &str| {
            if spec.ip_netns_exec {
                ns.command(program)
            } else {
                ns.command_keeping_mounts(program)
            }
        };
        Ok(match spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = enter(program);
                command.args(args).arg(binary);
                command
            }
            None => enter(binary),
        })
    }

    fn of(process: Process, ns: &NetNs, spec: &DaemonSpec) -> Self {
        Self {
            process,
            spec: spec.clone(),
            namespace: ns.name().to_owned(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.spec.socket
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// What the daemon has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits up to `timeout` for the daemon to exit by itself: its status, or `None`
    /// if it still runs (it is then stopped on drop).
    ///
    /// # Errors
    /// When it was stopped already or cannot be waited for.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        self.process.wait_exit(timeout)
    }

    /// A client of this daemon, as root.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.spec.socket)
    }

    /// Stops the daemon as an administrator would (SIGTERM) and returns its log.
    ///
    /// # Errors
    /// When it does not exit within [`STOP_TIMEOUT`] (it is then killed) or exits
    /// unsuccessfully.
    pub fn stop(mut self) -> anyhow::Result<String> {
        let status = self.process.terminate()?;
        let log = self.log();
        ensure!(
            status.success(),
            "capstats -d exited with {status} after SIGTERM; its log:\n{log}"
        );
        Ok(log)
    }

    /// Kills the daemon as a crash would (SIGKILL: no cleanup at all) and returns its
    /// log.
    ///
    /// # Errors
    /// When it was stopped already.
    pub fn kill(mut self) -> anyhow::Result<String> {
        self.process.kill()?;
        Ok(self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.process.is_stopped() {
            return;
        }
        if let Err(e) = self.process.terminate() {
            eprintln!("warning: {e:#}");
        }
        // Captured by the harness: shown only if the test fails.
        eprintln!(
            "log of capstats -d in {} ({}):\n{}",
            self.namespace,
            self.spec.socket.display(),
            self.log()
        );
    }
}

/// An account to run the client as: `setpriv --reuid=USER --regid=GROUP --init-groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    /// The primary group (a name or number) to run with.
    pub group: String,
}

impl RunAs {
    /// `setpriv ... --` in front of `program`.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.user))
            .arg(format!("--regid={}", self.group))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        command
    }
}

/// `capstats -s SOCKET [--json] ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    binary: PathBuf,
    socket: PathBuf,
    json: bool,
    run_as: Option<RunAs>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}, stdout {:?}, stderr {:?}",
            self.code
                .map_or_else(|| "none (signal)".to_owned(), |c| c.to_string()),
            self.stdout,
            self.stderr
        )
    }
}

impl Client {
    /// A client of the daemon on `socket`, run as root, printing for people.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn new(socket: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            binary: binary()?,
            socket: socket.to_owned(),
            json: false,
            run_as: None,
        })
    }

    /// The same client with `--json`.
    pub fn json(&self) -> Self {
        Self {
            json: true,
            ..self.clone()
        }
    }

    /// The same client run as another account.
    pub fn run_as(&self, run_as: RunAs) -> Self {
        Self {
            run_as: Some(run_as),
            ..self.clone()
        }
    }

    /// The command line, not started: `[setpriv ... --] capstats -s SOCKET [--json] ARGS`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = match &self.run_as {
            Some(run_as) => run_as.command(&self.binary),
            None => Command::new(&self.binary),
        };
        command.arg("-s").arg(&self.socket);
        if self.json {
            command.arg("--json");
        }
        // The socket is named: no CAPSTATS_SOCKET from the environment may interfere.
        command.args(args).env_remove("CAPSTATS_SOCKET");
        command
    }

    /// Runs the client to completion (at most [`CLIENT_TIMEOUT`]).
    ///
    /// # Errors
    /// When it cannot be started or does not finish in time.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Outcome> {
        output_within(&mut self.command(args), CLIENT_TIMEOUT)
    }

    /// Runs the client and requires success; returns its stdout.
    ///
    /// # Errors
    /// When it fails; the error shows the command and its outputs.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let outcome = self.run(args)?;
        ensure!(
            outcome.code == Some(0),
            "`{}` failed: {outcome}",
            command_line(&self.command(args))
        );
        Ok(outcome.stdout)
    }

    /// Runs the client and requires a failure as the CLI reports one: exit code 1, a
    /// message on stderr, nothing on stdout.
    ///
    /// # Errors
    /// When it succeeds or fails otherwise.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<Outcome> {
        let outcome = self.run(args)?;
        ensure!(
            outcome.code == Some(1)
                && !outcome.stderr.trim().is_empty()
                && outcome.stdout.is_empty(),
            "`{}` should fail with exit code 1 and a message on stderr only: {outcome}",
            command_line(&self.command(args))
        );
        Ok(outcome)
    }

    /// Runs a command that prints sessions, with `--json`, and parses its lines.
    ///
    /// # Errors
    /// When it fails or prints something that is not a session.
    pub fn sessions(&self, args: &[&str]) -> anyhow::Result<Vec<Session>> {
        let stdout = self.json().ok(args)?;
        stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .with_context(|| format!("`{}` printed {line:?}", args.join(" ")))
            })
            .collect()
    }

    /// Runs a command that prints one session (`new`, `modify`, `stop`, `show`), with
    /// `--json`, and parses it.
    ///
    /// # Errors
    /// When it fails, or prints other than one session.
    pub fn session(&self, args: &[&str]) -> anyhow::Result<Session> {
        match self.sessions(args)?.as_slice() {
            [session] => Ok(session.clone()),
            other => bail!("`{}` printed {} sessions", args.join(" "), other.len()),
        }
    }

    /// `show --json NAME`.
    ///
    /// # Errors
    /// When it fails.
    pub fn show(&self, name: &str) -> anyhow::Result<Session> {
        self.session(&["show", name])
    }

    /// `list --json`, without the time each line was read: what a request that is
    /// refused must leave exactly as it was.
    ///
    /// # Errors
    /// When it fails.
    pub fn listed(&self) -> anyhow::Result<Vec<Session>> {
        let mut sessions = self.sessions(&["list"])?;
        for session in &mut sessions {
            session.read_at = None;
        }
        Ok(sessions)
    }

    /// `poll --json`: every session with its counters.
    ///
    /// # Errors
    /// When it fails.
    pub fn poll(&self) -> anyhow::Result<Vec<Session>> {
        self.sessions(&["poll"])
    }

    /// Polls session `name` until it has counted at least `packets` (or `timeout`
    /// passes), then until its count has not moved for `quiet`; returns it as it is
    /// then. Frames written into a veth are counted in the receiver's softirq, a
    /// moment after the writer returns.
    ///
    /// # Errors
    /// When the count is not reached in time; the error says how far it got.
    pub fn settle(
        &self,
        name: &str,
        packets: u64,
        timeout: Duration,
        quiet: Duration,
    ) -> anyhow::Result<Session> {
        let deadline = Instant::now() + timeout;
        let count = |s: &Session| s.packets.unwrap_or(0);
        let mut session = self.show(name)?;
        while count(&session) < packets {
            if Instant::now() > deadline {
                bail!(
                    "session {name:?} counted {} packets within {timeout:?}, expected at least {packets}",
                    count(&session)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
            session = self.show(name)?;
        }
        loop {
            std::thread::sleep(quiet);
            let now = self.show(name)?;
            if count(&now) == count(&session) {
                return Ok(now);
            }
            session = now;
        }
    }

    /// Starts the client without waiting (for `watch`); stopped when the returned
    /// value is dropped.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Running> {
        let mut command = self.command(args);
        let line = command_line(&command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{line}`"))?;
        Ok(Running {
            child: Some(child),
            line,
        })
    }
}

/// A client started with [`Client::spawn`]; killed on drop.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    line: String,
}

impl Running {
    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Interrupts it (SIGINT, as Ctrl-C) and returns how it ended with all it printed.
    ///
    /// # Errors
    /// When it does not end within [`CLIENT_TIMEOUT`].
    pub fn interrupt(mut self) -> anyhow::Result<Outcome> {
        let mut child = self.child.take().expect("a running client");
        // SAFETY: signals our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        collect(&mut child, &self.line, CLIENT_TIMEOUT)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` with its outputs captured, killing it if it takes longer than `timeout`.
///
/// # Errors
/// When it cannot be started or runs too long.
pub fn output_within(command: &mut Command, timeout: Duration) -> anyhow::Result<Outcome> {
    let line = command_line(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    collect(&mut child, &line, timeout)
}

/// Waits for `child` (killing it after `timeout`) while reading both of its outputs.
fn collect(child: &mut Child, line: &str, timeout: Duration) -> anyhow::Result<Outcome> {
    fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let text = |handle: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&handle.join().unwrap_or_default()).into_owned()
    };
    Ok(Outcome {
        code: status.code(),
        stdout: text(stdout),
        stderr: text(stderr),
    })
}
