//! Where the daemon bench sends its frames: two network namespaces joined by a veth
//! pair, so that nothing it sends can reach the host's interfaces.
//!
//! The sender writes on [`SEND_IF`] in one namespace; the frames arrive on
//! [`RECV_IF`] in the other, where the daemon runs and counts. The link is quiet:
//! IPv6 is off in both namespaces before the interfaces exist and no interface has an
//! address, so neither kernel sends a frame of its own (no router solicitation, DAD,
//! ARP) and every frame on the link is one the bench wrote. GRO is off on the receiving
//! end, so the kernel merges no frames and every frame sent is one frame counted.
//!
//! Namespaces are `capstats-bench-<pid>-<tag>`, deleted on drop (also while a panic
//! unwinds); deleting a namespace destroys its end of the pair, and the pair with it.
//! A bench killed before its guards ran leaves its namespaces behind: the next run
//! deletes those whose process is gone.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Prefix of every namespace the bench creates.
const PREFIX: &str = "capstats-bench-";
/// Where `ip netns` keeps its namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// The sending end, in [`Pair::sender`].
pub const SEND_IF: &str = "veth-send";
/// The receiving end, in [`Pair::receiver`], where the daemon counts.
pub const RECV_IF: &str = "veth-recv";

/// A named network namespace that exists while this value does.
#[derive(Debug)]
pub struct Namespace {
    /// Our reference for `setns()`; declared first, so it is closed before the name is
    /// deleted.
    fd: OwnedFd,
    name: Registered,
}

/// The `ip netns` name, deleted on drop.
#[derive(Debug)]
struct Registered(String);

impl Drop for Registered {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.0]).status() {
            Ok(status) if status.success() => {}
            // Drop cannot fail, and may run while a panic unwinds: say it loudly.
            outcome => eprintln!(
                "warning: network namespace {} was not deleted ({outcome:?}); `ip netns del {}` removes it",
                self.0, self.0
            ),
        }
    }
}

impl Namespace {
    /// Creates an empty namespace whose name ends with `tag`.
    fn create(tag: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        // Owned from here: a failure below deletes it again.
        let name = Registered(name);
        let path = format!("{NETNS_RUN_DIR}/{}", name.0);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(Self {
            fd: file.into(),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name.0
    }

    /// `ip -n NAME ARGS...`, checked; returns its standard output.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command running `program` inside the namespace (`ip netns exec`, which execs
    /// it: the child's pid is the program's).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.name()]).arg(program);
        command
    }

    /// Runs `f` on a thread of its own inside the namespace: `setns()` moves only the
    /// calling thread, and the bench's main thread stays in the host's namespace.
    /// Sockets keep the namespace they were made in, so one opened here can be returned
    /// and used from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: a namespace fd we own; setns changes this thread only.
                    if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!(
                            "setns() into {}: {}",
                            self.name(),
                            std::io::Error::last_os_error()
                        );
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets a `net.*` sysctl of this namespace (/proc/sys/net shows the namespace of the
    /// thread that opens it).
    fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value).with_context(|| format!("{key} = {value}")))
            .with_context(|| format!("in network namespace {}", self.name()))
    }
}

/// The sending and receiving namespaces and the veth pair between them.
#[derive(Debug)]
pub struct Pair {
    pub sender: Namespace,
    pub receiver: Namespace,
}

impl Pair {
    /// Creates both namespaces and the pair, with fixed MAC addresses (the frames are
    /// addressed to [`RECV_IF`], as a host's own traffic is), both ends up, and the
    /// receiver's loopback up too (idle sessions count there).
    pub fn create(send_mac: [u8; 6], recv_mac: [u8; 6]) -> anyhow::Result<Self> {
        sweep_stale();
        let pair = Self {
            sender: Namespace::create("send")?,
            receiver: Namespace::create("recv")?,
        };
        for ns in [&pair.sender, &pair.receiver] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        // Created directly inside the namespaces: never visible in the host's.
        pair.sender.ip(&[
            "link",
            "add",
            SEND_IF,
            "address",
            &mac(send_mac),
            "type",
            "veth",
            "peer",
            "name",
            RECV_IF,
            "address",
            &mac(recv_mac),
            "netns",
            pair.receiver.name(),
        ])?;
        let status = pair
            .receiver
            .command(Path::new("ethtool"))
            .args(["-K", RECV_IF, "gro", "off"])
            .stdout(std::process::Stdio::null())
            .status()
            .context("starting ethtool")?;
        if !status.success() {
            bail!("ethtool -K {RECV_IF} gro off failed ({status})");
        }
        pair.sender.ip(&["link", "set", SEND_IF, "up"])?;
        pair.receiver.ip(&["link", "set", RECV_IF, "up"])?;
        pair.receiver.ip(&["link", "set", "lo", "up"])?;
        Ok(pair)
    }
}

/// `ip ARGS...`, checked; returns its standard output.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("starting ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kills what still runs in a namespace a dead bench left (a tool of its peer
/// comparison whose death signal did not come): only the bench starts processes there.
fn kill_processes_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        eprintln!("killing process {pid}, left in network namespace {name}");
        // SAFETY: a plain signal to a process of a namespace only the bench uses.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Deletes the namespaces of earlier bench processes that no longer exist, and kills
/// what still runs in them.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting network namespace {name}, left by an earlier bench");
            kill_processes_in(&name);
            drop(Registered(name));
        }
    }
}
