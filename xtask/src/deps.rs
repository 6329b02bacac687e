//! What a fresh Debian machine needs before capstats builds and its tests run: root,
//! the packages, the test corpus, bpffs, and the Rust tools the checks use.
//!
//! Shared by `cargo xtask run` and `cargo xtask test`, so the demo and CI prepare a
//! machine the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd::{self, Steps};

/// Debian packages and why capstats needs each.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "libpcap-dev",
        "libpcap compiles filter expressions; capstats links it",
    ),
    ("tcpdump", "the oracle the tests compare counts with"),
    ("tcpreplay", "replays captures into veth pairs in the tests"),
    (
        "iproute2",
        "ip netns / ip link / tc for the tests' namespaces and hooks",
    ),
    (
        "ethtool",
        "turns on GRO so veth peers receive XDP-generated frames",
    ),
    (
        "python3-prometheus-client",
        "the tests parse the metrics exposition with an outside parser",
    ),
    (
        "prometheus",
        "a real Prometheus server scrapes the daemon's /metrics in the tests",
    ),
    (
        "openssl",
        "the tests make a certificate for the metrics endpoint's TLS",
    ),
    (
        "curl",
        "an outside HTTPS client with basic authentication for the metrics endpoint",
    ),
    (
        "bpftool",
        "inspecting loaded programs and maps when something goes wrong",
    ),
    (
        "strace",
        "daemon_persist watches that a change is on disk before it is answered",
    ),
    ("zsh", "the completion tests load the zsh script"),
    ("fish", "the completion tests ask fish what it completes"),
    (
        "dpkg-dev",
        "cargo xtask deb computes Depends with dpkg-shlibdeps",
    ),
    ("binutils", "cargo xtask deb strips the packaged binary"),
    ("man-db", "the man page tests render capstats(8) with man"),
    (
        "systemd",
        "the package test checks the unit with systemd-analyze verify",
    ),
    (
        "shellcheck",
        "the contrib test checks the node_exporter textfile script",
    ),
];

/// Debian packages only `cargo xtask bench` needs, and why: the peers it compares
/// capstats with. Not in [`PACKAGES`]: the tests do not use them.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    (
        "capstats",
        "Zeek's capstats (/usr/bin/capstats), a libpcap peer in the bench's comparison",
    ),
    (
        "iptables",
        "iptables -m bpf, the kernel peer in the bench's comparison",
    ),
    (
        "nftables",
        "nft removes the iptables-nft raw table between the bench's runs",
    ),
];

/// Where the capture corpus is when `CAPSTATS_CORPUS` does not say.
const CORPUS_BESIDE_REPO: &str = "../shared/corpus";

/// The steps [`prepare`] adds to a task.
pub const PREPARE_STEPS: usize = 3;

/// Checks root, installs missing packages and finds the corpus; returns the corpus.
pub fn prepare(steps: &mut Steps, task: &str) -> anyhow::Result<PathBuf> {
    steps.run("check that we run as root", || require_root(task))?;
    steps.run("Debian packages", ensure_packages)?;
    steps.run("test corpus", corpus)
}

/// Fails, saying why, unless the effective user is root.
pub fn require_root(task: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "cargo xtask {task} must run as root (effective uid is {euid}): it installs Debian packages with \
             apt-get, and capstats loads eBPF programs into the kernel. Try: sudo -E env \"PATH=$PATH\" cargo xtask {task}"
        );
    }
    println!("    running as root");
    Ok(())
}

/// Installs the [`PACKAGES`] that `dpkg -s` does not report installed; runs
/// `apt-get update` only if one is missing.
pub fn ensure_packages() -> anyhow::Result<()> {
    ensure(PACKAGES)
}

/// [`PACKAGES`] and [`BENCH_PACKAGES`], as [`ensure_packages`] does.
pub fn ensure_bench_packages() -> anyhow::Result<()> {
    let all: Vec<(&str, &str)> = PACKAGES.iter().chain(BENCH_PACKAGES).copied().collect();
    ensure(&all)
}

fn ensure(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|&(name, _)| name)
        .filter(|name| !installed(name))
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = packages.iter().map(|&(name, _)| name).collect();
        println!("    all installed: {}", names.join(" "));
        return Ok(());
    }
    for &(name, why) in packages.iter().filter(|(name, _)| missing.contains(name)) {
        println!("    missing {name}: {why}");
    }
    if !cmd::succeeds(Command::new("apt-get").arg("--version")) {
        bail!(
            "apt-get is not available, install these packages by hand: {}",
            missing.join(" ")
        );
    }
    let apt = || {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    cmd::run(apt().args(["update", "-q"]))?;
    // Packages such as prometheus start a system service when installed; the tests run
    // their own servers in namespaces. A policy-rc.d that says "no" (101) keeps the
    // services from starting, as container images do; ours is removed afterwards.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists() && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok();
    if ours {
        let _ =
            std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    }
    let installed_now = cmd::run(
        apt()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    );
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed_now?;
    let still: Vec<&str> = missing
        .into_iter()
        .filter(|name| !installed(name))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but dpkg still does not list {} as installed",
            still.join(" ")
        );
    }
    Ok(())
}

/// `dpkg -s NAME` says `Status: install ok installed` (a removed package whose
/// configuration files remain also makes `dpkg -s` exit 0, so the status is read).
fn installed(name: &str) -> bool {
    let Ok(out) = Command::new("dpkg").args(["-s", name]).output() else {
        return false;
    };
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.trim() == "Status: install ok installed")
}

/// The capture corpus: `$CAPSTATS_CORPUS`, or `shared/corpus` beside the repository
/// (where CI puts its copy of shared/). Fails loudly when it is missing, because the
/// tests would otherwise fail one by one with less clear messages.
pub fn corpus() -> anyhow::Result<PathBuf> {
    let (path, origin) = match std::env::var_os("CAPSTATS_CORPUS") {
        Some(path) => (PathBuf::from(path), "CAPSTATS_CORPUS"),
        None => (
            cmd::workspace_root().join(CORPUS_BESIDE_REPO),
            "the default place",
        ),
    };
    if !path.join("pcap").is_dir() {
        bail!(
            "the test corpus is not at {} ({origin}): expected a directory with pcap/ and pcapng/ captures. \
             Put a copy of shared/ beside the repository (<repo>/{CORPUS_BESIDE_REPO}) or set CAPSTATS_CORPUS",
            path.display()
        );
    }
    let path = path
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?;
    println!("    {} ({origin})", path.display());
    Ok(path)
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted: pinned programs and maps live
/// there, and it is not mounted at boot on every machine.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    // /proc/mounts: device, mount point, file system type, ...
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1..3) == Some(&["/sys/fs/bpf", "bpf"][..])
    });
    if mounted {
        println!("    bpffs is mounted at /sys/fs/bpf");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Whether `cargo TOOL --version` works (rustfmt and clippy are rustup components that a
/// minimal toolchain may lack).
pub fn cargo_tool(tool: &str) -> bool {
    cmd::succeeds(cmd::cargo().args([tool, "--version"]))
}
