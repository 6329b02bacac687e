//! The daemon under measurement, `capstats -d`, and what the kernel says about its
//! process: CPU time and resident memory.
//!
//! The daemon runs inside the receiving namespace (`ip netns exec` execs it, so the
//! child's pid is the daemon's), with its socket, state and log in the bench's scratch
//! directory, started by the launcher the end-to-end tests use
//! ([`capstats_testkit::launch::start_daemon`]). It is stopped on drop, also while a panic
//! unwinds: SIGTERM, then SIGKILL if it has not gone within
//! [`capstats_testkit::launch::STOP_TIMEOUT`]. Should the bench itself die without unwinding, the
//! kernel sends the daemon SIGTERM (`PR_SET_PDEATHSIG`; the signal comes when the thread
//! that started it ends: the bench's main thread).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_testkit::launch::{DaemonArgs, Process};

use super::netns::Namespace;

/// A running `capstats -d`, stopped when dropped.
#[derive(Debug)]
pub struct Daemon {
    process: Process,
    args: DaemonArgs,
}

impl Daemon {
    /// Starts `capstats -d` in `ns` with its socket, state and log in `dir`, serving
    /// `/metrics` at `metrics` (in `ns`), and returns once the socket answers (the
    /// daemon binds the metrics address before its socket).
    pub fn start(
        capstats: &Path,
        ns: &Namespace,
        dir: &Path,
        metrics: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let args = Self::args(dir, metrics);
        let (command, log) = (ns.command(capstats), dir.join("daemon.log"));
        let process = capstats_testkit::launch::start_daemon(command, &args, &log)?;
        Ok(Self { process, args })
    }

    /// [`Daemon::start`], returning as soon as the daemon answers, its restored
    /// sessions' filters compiled or not (4,096 take minutes).
    pub fn start_restoring(
        capstats: &Path,
        ns: &Namespace,
        dir: &Path,
        metrics: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let args = Self::args(dir, metrics);
        let (command, log) = (ns.command(capstats), dir.join("daemon.log"));
        let process = capstats_testkit::launch::start_daemon_answering(command, &args, &log)?;
        Ok(Self { process, args })
    }

    /// The daemon's flags: socket, state and log in `dir`, pins of its own.
    fn args(dir: &Path, metrics: std::net::SocketAddr) -> DaemonArgs {
        DaemonArgs {
            socket: dir.join("capstats.sock"),
            state_dir: dir.join("state"),
            // Its own pins, removed when it stops: the bench leaves nothing pinned.
            pin_dir: format!("/sys/fs/bpf/capstats-bench-{}", std::process::id()).into(),
            detach_on_exit: true,
            metrics: Some(metrics),
            ..DaemonArgs::default()
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    pub fn socket(&self) -> &Path {
        &self.args.socket
    }

    /// What the daemon has logged (stdout and stderr).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Stops the daemon as an administrator would (SIGTERM); fails unless it exits 0.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.process.terminate()?;
        ensure!(
            status.success(),
            "capstats -d exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
        Ok(())
    }
}

/// Kills the daemon if the bench has not finished with it by a deadline: every request
/// waiting on it then fails, so a hung daemon ends the bench instead of holding it.
#[derive(Debug)]
pub struct Watchdog {
    cancel: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms the watchdog for `daemon`. Drop it before the daemon is stopped (and its pid
    /// reaped and free for reuse).
    pub fn arm(daemon: &Daemon, timeout: Duration) -> Self {
        let pid = daemon.pid() as libc::pid_t;
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(timeout)
            {
                eprintln!(
                    "the daemon bench is still running after {timeout:?}: killing capstats -d"
                );
                // SAFETY: our child, not reaped while the watchdog is armed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Self {
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// CPU time a process has used, as the kernel accounts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// utime + stime of `/proc/PID/stat`, every thread's (finished ones too), in clock
    /// ticks ([`clock_ticks_per_second`]).
    pub ticks: u64,
    /// Nanoseconds on a CPU per thread (`/proc/PID/task/TID/schedstat`): finer than a
    /// tick, so that "nothing" can be told from "under 10 ms".
    pub on_cpu_ns: HashMap<u32, u64>,
}

impl CpuUsage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let mut on_cpu_ns = HashMap::new();
        let tasks = format!("/proc/{pid}/task");
        for entry in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
            let entry = entry?;
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // A thread may end between the listing and the read: it then has no figure.
            if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat"))
                && let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse().ok())
            {
                on_cpu_ns.insert(tid, ns);
            }
        }
        Ok(Self {
            ticks: stat_ticks(&stat)?,
            on_cpu_ns,
        })
    }

    /// Nanoseconds on a CPU since `before`, of the threads there now (a thread that
    /// ended in between is missing; one that started counts from zero).
    pub fn on_cpu_ns_since(&self, before: &CpuUsage) -> u64 {
        self.on_cpu_ns
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(before.on_cpu_ns.get(tid).copied().unwrap_or(0)))
            .sum()
    }
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces and parentheses: fields are counted after the
/// last `)`, where field 3 (state) comes first, so utime (14) and stime (15) are the
/// 12th and 13th.
fn stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let (_, rest) = stat
        .rsplit_once(')')
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/PID/stat has no number at field {}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of utime and stime (and of /proc/stat).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        ticks if ticks > 0 => ticks as u64,
        _ => 100,
    }
}

/// `VmRSS` of `/proc/PID/status`, in KiB: the process's memory resident in RAM.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_counted_after_the_command_name() {
        let stat =
            "4242 (capstats (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 7 5 0 0 20 0 3 0 100 0";
        assert_eq!(stat_ticks(stat).unwrap(), 12);
    }

    #[test]
    fn our_own_process_has_figures() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let usage = CpuUsage::of(pid).unwrap();
        assert!(usage.on_cpu_ns.contains_key(&pid));
    }
}
