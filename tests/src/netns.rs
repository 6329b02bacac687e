//! Named network namespaces owned by a test, and running code or commands inside them.
//!
//! A [`NetNs`] is created with `ip netns add` (so `ip netns list`, `ip -n` and
//! `ip netns exec` know it while the test runs) and deleted with `ip netns del` when it
//! is dropped, which also happens while a panicking test unwinds. Deleting a namespace
//! destroys its interfaces, and a veth pair goes with either of its ends.
//!
//! Names are `capstats-e2e-<pid>-<n>-<tag>`. A test process killed before its guards ran
//! leaves its namespaces behind; the first [`NetNs::create`] of a later run deletes those
//! whose process is gone.
//!
//! Code runs in a namespace on a thread of its own ([`NetNs::run`]): `setns()` changes
//! the namespace of the calling thread only, and the test's main thread stays in the
//! host's. Sockets keep the namespace they were created in, whichever thread uses them
//! later, so a socket opened inside [`NetNs::run`] can be returned and used anywhere.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{self, Command};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use anyhow::Context;

use crate::cmd;

/// Prefix of every namespace the tests create.
pub const PREFIX: &str = "capstats-e2e-";
/// Where `ip netns` keeps its namespaces (bind mounts of `/proc/<pid>/ns/net`).
const NETNS_RUN_DIR: &str = "/run/netns";

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A network namespace that exists while this value does.
#[derive(Debug)]
pub struct NetNs {
    /// Our own reference, for `setns()`. Closed before the name is deleted.
    fd: OwnedFd,
    name: Registered,
}

/// The `ip netns` name, deleted on drop.
#[derive(Debug)]
struct Registered(String);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Err(e) = cmd::run(Command::new("ip").args(["netns", "del", &self.0])) {
            // Drop cannot fail, and may run while a test panics: say it loudly.
            eprintln!(
                "warning: network namespace {} was not deleted: {e:#}",
                self.0
            );
        }
    }
}

impl NetNs {
    /// Creates an empty namespace; `tag` ends its name, to tell a test's namespaces apart.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, no `ip`) or the namespace cannot be opened.
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        SWEEP.call_once(sweep_stale);
        let name = format!(
            "{PREFIX}{}-{}-{tag}",
            process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cmd::run(Command::new("ip").args(["netns", "add", &name]))?;
        // Owned from here: a failure below deletes it again.
        let name = Registered(name);
        let path = format!("{NETNS_RUN_DIR}/{}", name.0);
        let file =
            File::open(&path).with_context(|| format!("cannot open network namespace {path}"))?;
        Ok(Self {
            fd: file.into(),
            name,
        })
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name.0
    }

    /// Moves the calling thread into this namespace, for good: use it only on threads
    /// made for the purpose (or see [`NetNs::run`]).
    ///
    /// # Errors
    /// When `setns()` fails.
    pub fn enter_current_thread(&self) -> io::Result<()> {
        // SAFETY: the fd is a namespace fd we own; setns only changes this thread.
        let rc = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs `f` on a new thread inside this namespace and returns its result; a panic in
    /// `f` continues in the caller.
    ///
    /// # Errors
    /// When the thread cannot enter the namespace, or `f`'s own error.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        thread::scope(|scope| {
            let thread = scope.spawn(|| {
                self.enter_current_thread()
                    .with_context(|| format!("setns() into network namespace {}", self.name()))?;
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip -n NAME ARGS...`, checked.
    ///
    /// # Errors
    /// When `ip` fails; the error has its message.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        cmd::run(Command::new("ip").arg("-n").arg(self.name()).args(args))
    }

    /// Renames the interface `from` to `to` as an administrator would: down, renamed
    /// (an interface that is up cannot be), up again.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn rename_link(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.ip(&["link", "set", from, "down"])?;
        self.ip(&["link", "set", from, "name", to])?;
        self.ip(&["link", "set", to, "up"]).map(drop)
    }

    /// Moves the interface `name` into namespace `to` and brings it up there.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn move_link(&self, name: &str, to: &NetNs) -> anyhow::Result<()> {
        self.ip(&["link", "set", name, "netns", to.name()])?;
        to.ip(&["link", "set", name, "up"]).map(drop)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which also
    /// mounts the namespace's own `/sys`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.name(), program]);
        command
    }

    /// A command that runs `program` in the namespace's network stack but the test's
    /// mount namespace (`nsenter --net`): unlike [`NetNs::command`], it sees the host's
    /// `/sys/fs/bpf`, so objects it pins outlive it, as a daemon's must.
    pub fn command_keeping_mounts(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name()))
            .arg("--")
            .arg(program);
        command
    }

    /// Sets a `net.*` sysctl of this namespace, e.g. `net.ipv6.conf.all.disable_ipv6`.
    ///
    /// # Errors
    /// When the key does not exist or cannot be written.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // /proc/sys/net shows the namespace of the thread that opens it.
        self.run(|| {
            std::fs::write(&path, value).with_context(|| format!("cannot set {key} = {value}"))
        })
        .with_context(|| format!("in network namespace {}", self.name()))
    }
}

/// Deletes the namespaces of test processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if pid != process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            drop(Registered(name));
        }
    }
}
