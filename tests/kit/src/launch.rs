//! Starting and stopping `capstats -d` for the end-to-end tests (`capstats-tests`) and
//! the bench (`xtask-bench`): one launcher, so that both run the daemon the same way.
//!
//! [`start_daemon`] is the one function that starts a daemon: it appends the daemon's
//! flags ([`DaemonArgs`]) to a command that execs the binary (`nsenter --net=... capstats`,
//! `ip netns exec NS capstats`, a wrapper such as `prlimit ... --`), sends its stdout and
//! stderr to a log file, makes the kernel stop it should the starting thread die
//! ([`dies_with_spawner`], the one `PR_SET_PDEATHSIG` block), and returns once it answers
//! a `list` on its socket, or fails with its log. [`spawn_daemon`] starts one without
//! waiting, for daemons expected to refuse to start.
//!
//! The [`Process`] it returns stops the daemon as an administrator would (SIGTERM, then
//! SIGKILL after [`STOP_TIMEOUT`]) when asked, and when dropped.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a daemon may take to answer after it is started.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags of `capstats -d`: `-d [-g GROUP] -s SOCKET --state-dir DIR --pin-dir DIR
/// [--detach-on-exit] [--idle-timeout SECS] [--metrics ADDR [--web-config FILE]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonArgs {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// `-g GROUP`: a group name or number whose members may use the daemon.
    pub group: Option<String>,
    /// `--detach-on-exit`: a clean stop removes the pins (nothing stays attached).
    pub detach_on_exit: bool,
    /// `--idle-timeout`: how long a client may take to send a whole request.
    pub idle_timeout: Option<Duration>,
    /// `--metrics ADDR`: serve `/metrics` there.
    pub metrics: Option<SocketAddr>,
    /// `--web-config FILE` (with `metrics`).
    pub web_config: Option<PathBuf>,
}

impl DaemonArgs {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-d".into()];
        if let Some(group) = &self.group {
            args.extend(["-g".into(), group.into()]);
        }
        args.extend([
            "-s".into(),
            self.socket.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--pin-dir".into(),
            self.pin_dir.clone().into(),
        ]);
        if self.detach_on_exit {
            args.push("--detach-on-exit".into());
        }
        if let Some(idle) = self.idle_timeout {
            args.extend([
                "--idle-timeout".into(),
                idle.as_secs_f64().to_string().into(),
            ]);
        }
        if let Some(metrics) = self.metrics {
            args.extend(["--metrics".into(), metrics.to_string().into()]);
        }
        if let Some(web_config) = &self.web_config {
            args.extend(["--web-config".into(), web_config.clone().into()]);
        }
        args
    }
}

/// Starts `capstats -d` and returns once it answers a `list` on its socket.
///
/// `command` runs the binary (and must exec it, so that the child is the daemon):
/// the daemon's flags are appended to it, its stdout and stderr go to `log`.
///
/// # Errors
/// When it cannot be started, exits, or does not answer within [`START_TIMEOUT`]; the
/// error carries its log.
pub fn start_daemon(command: Command, args: &DaemonArgs, log: &Path) -> anyhow::Result<Process> {
    start_daemon_until(command, args, log, |list| {
        !list.contains("\"compiling\":true")
    })
}

/// [`start_daemon`], returning as soon as the daemon answers a `list`, its restored
/// sessions' filters compiled or not: for a test that watches the restore itself.
///
/// # Errors
/// As [`start_daemon`].
pub fn start_daemon_answering(
    command: Command,
    args: &DaemonArgs,
    log: &Path,
) -> anyhow::Result<Process> {
    start_daemon_until(command, args, log, |_| true)
}

/// Starts the daemon and waits until its answer to `list` is `ready`.
fn start_daemon_until(
    command: Command,
    args: &DaemonArgs,
    log: &Path,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<Process> {
    let mut daemon = spawn_daemon(command, args, log)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "`{}` exited ({status}) before answering on {}; its log:\n{}",
                daemon.line,
                args.socket.display(),
                daemon.log()
            );
        }
        if list(&args.socket).is_some_and(|list| ready(&list)) {
            return Ok(daemon);
        }
        if Instant::now() > deadline {
            bail!(
                "`{}` did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
                daemon.line,
                args.socket.display(),
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`start_daemon`] without waiting for an answer: for a daemon expected to refuse to
/// start, or one whose start a test watches itself.
///
/// # Errors
/// When the log cannot be created or the command cannot be run.
pub fn spawn_daemon(
    mut command: Command,
    args: &DaemonArgs,
    log: &Path,
) -> anyhow::Result<Process> {
    command.args(args.to_args());
    spawn_logged(command, log)
}

/// Starts `command` as [`spawn_daemon`] starts the daemon: no stdin, stdout and stderr
/// to `log`, SIGTERM when the spawning thread ends; for the servers a test runs beside
/// the daemon (Prometheus).
///
/// # Errors
/// When the log cannot be created or the command cannot be run.
pub fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<Process> {
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    dies_with_spawner(&mut command, libc::SIGTERM);
    let line = command_line(&command);
    let child = command
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    Ok(Process {
        child: Some(child),
        log: log.to_owned(),
        line,
    })
}

/// Has the kernel send `signal` to `command`'s child when the thread that spawns it
/// ends, also when the test or the bench dies without running its guards. The setting
/// survives exec (`nsenter`, `ip netns exec` and `setpriv` exec the program in the
/// same process; none of ours is set-uid), so the program itself gets the signal.
pub fn dies_with_spawner(command: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe and changes only the child.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether a daemon answers a `list` request on `socket`.
pub fn answers(socket: &Path) -> bool {
    list(socket).is_some()
}

/// The daemon's answer to a `list` request on `socket`, if it gives one.
fn list(socket: &Path) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    stream
        .write_all(b"{\"version\":1,\"command\":\"list\"}\n")
        .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with('{').then_some(line)
}

/// Stops a child as an administrator would: SIGTERM, then SIGKILL if it has not exited
/// within `timeout`. Returns its exit status, or `None` when it had to be killed.
///
/// # Errors
/// When waiting for it fails.
pub fn terminate(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    // SAFETY: signals our own child, which has not been waited for (its pid is not
    // reused yet).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The program and its arguments, as a shell would show them.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A started daemon: stopped with SIGTERM (SIGKILL after [`STOP_TIMEOUT`]) when
/// dropped, unless it has been stopped or has exited.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
    /// The command line, for messages.
    line: String,
}

impl Process {
    /// Its process id, while it runs (until it is stopped or found exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Whether it has been stopped, killed or found exited.
    pub fn is_stopped(&self) -> bool {
        self.child.is_none()
    }

    /// What it has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// Its exit status if it has exited (it is then no longer ours to stop).
    ///
    /// # Errors
    /// When it was stopped already, or waiting fails.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("`{}` was stopped already", self.line))?;
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits up to `timeout` for it to exit by itself: its status, or `None` if it
    /// still runs.
    ///
    /// # Errors
    /// When it was stopped already, or waiting fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]: its exit status.
    ///
    /// # Errors
    /// When it was stopped already, or had to be killed (the error has its log).
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("`{}` was stopped already", self.line);
        };
        match terminate(&mut child, STOP_TIMEOUT)? {
            Some(status) => Ok(status),
            None => bail!(
                "`{}` (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM and was \
                 killed; its log:\n{}",
                self.line,
                child.id(),
                self.log()
            ),
        }
    }

    /// Kills it as a crash would (SIGKILL: no cleanup at all).
    ///
    /// # Errors
    /// When it was stopped already.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("`{}` was stopped already", self.line);
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.terminate()
        {
            eprintln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the temporary directory, removed on drop (a
    /// failing test included).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("capstats-launch-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn flags_are_the_daemons() {
        let args = DaemonArgs {
            socket: "/run/s".into(),
            state_dir: "/var/st".into(),
            pin_dir: "/sys/fs/bpf/p".into(),
            group: Some("adm".into()),
            detach_on_exit: true,
            idle_timeout: Some(Duration::from_millis(1500)),
            metrics: Some("127.0.0.1:9100".parse().unwrap()),
            web_config: Some("/etc/web.yml".into()),
        };
        assert_eq!(
            args.to_args(),
            [
                "-d",
                "-g",
                "adm",
                "-s",
                "/run/s",
                "--state-dir",
                "/var/st",
                "--pin-dir",
                "/sys/fs/bpf/p",
                "--detach-on-exit",
                "--idle-timeout",
                "1.5",
                "--metrics",
                "127.0.0.1:9100",
                "--web-config",
                "/etc/web.yml"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn a_daemon_that_exits_at_once_fails_the_start_with_its_log() {
        let scratch = Scratch::new("start");
        let dir = &scratch.0;
        let mut command = Command::new("sh");
        command.args(["-c", "echo refused >&2; exit 3", "sh"]);
        let args = DaemonArgs {
            socket: dir.join("no.sock"),
            ..DaemonArgs::default()
        };
        let error = start_daemon(command, &args, &dir.join("log")).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("exited (exit status: 3)"), "{message}");
        assert!(message.contains("refused"), "{message}");
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_and_said_so() {
        let scratch = Scratch::new("t");
        let dir = &scratch.0;
        let mut command = Command::new("sh");
        // The daemon's flags land in "$@", which the script ignores.
        command.args([
            "-c",
            "trap '' TERM; echo up; while :; do sleep 1; done",
            "sh",
        ]);
        let mut process = spawn_daemon(command, &DaemonArgs::default(), &dir.join("log")).unwrap();
        // Only once the trap is set does SIGTERM go unheeded.
        let deadline = Instant::now() + START_TIMEOUT;
        while !process.log().contains("up") {
            assert!(Instant::now() < deadline, "the script did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(process.is_running());
        let started = Instant::now();
        let error = process.terminate().unwrap_err();
        assert!(started.elapsed() >= STOP_TIMEOUT);
        assert!(format!("{error:#}").contains("was killed"), "{error:#}");
        assert!(process.is_stopped());
    }

    #[test]
    fn a_daemon_gets_sigterm_when_the_thread_that_started_it_ends() {
        let scratch = Scratch::new("d");
        let dir = &scratch.0;
        let log = dir.join("log");
        let mut process = std::thread::spawn(move || {
            let mut command = Command::new("sh");
            command.args([
                "-c",
                "trap 'exit 7' TERM; echo up; while :; do sleep 0.05; done",
                "sh",
            ]);
            let process = spawn_daemon(command, &DaemonArgs::default(), &log).unwrap();
            while !process.log().contains("up") {
                std::thread::sleep(Duration::from_millis(10));
            }
            process
        })
        .join()
        .unwrap();
        let status = process.wait_exit(START_TIMEOUT).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(7));
    }
}
