//! `cargo xtask run`: a newcomer sees the kernel count packets within a minute.
//!
//! Prepare the machine (shared with `cargo xtask test`), build the `capstats` binary,
//! show `capstats test` on a few corpus captures, then start the daemon in the
//! foreground (socket and state under `target/`, logs on the terminal), create a first
//! session on the loopback interface, send it a few packets, poll it, and say how to go
//! on. Ctrl-C stops the daemon.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd::{self, Steps};
use crate::deps;

/// Captures from the corpus and the expressions counted on each: together they cover
/// TCP, DNS, 802.1Q, IPv6 and LLDP traffic.
const SHOWCASE: &[(&str, &[&str])] = &[
    (
        "pcap/tcpdump/mptcp-aa-v1.pcap",
        &["tcp", "tcp[tcpflags] & tcp-syn != 0", "udp port 53"],
    ),
    (
        "pcap/tcpdump/ldp-common-session.pcap",
        &["tcp", "udp", "vlan", "vlan and udp"],
    ),
    (
        "pcap/tcpdump/dcb_ets.pcap",
        &["ip6", "icmp6", "ether proto 0x88cc"],
    ),
];

/// The one shown with `--dump`: libpcap's classic program and the eBPF it becomes.
const DUMP: (&str, &str) = ("pcap/tcpdump/ldp-common-session.pcap", "vlan and udp");

pub fn run() -> anyhow::Result<()> {
    let mut steps = Steps::new("run", deps::PREPARE_STEPS + 3);
    let corpus = deps::prepare(&mut steps, "run")?;
    let capstats = steps.run("build capstats", || cmd::build_capstats(cmd::Profile::Dev))?;
    steps.run(
        "count packets of corpus captures in the kernel (capstats test)",
        || show(&capstats, &corpus),
    )?;
    let mut daemon = steps.run("start the daemon and a first session", || {
        start_daemon(&capstats)
    })?;
    steps.summary();
    // Foreground: the daemon's log goes on in this terminal until Ctrl-C (which reaches
    // the daemon too, and it shuts down cleanly).
    let status = daemon.wait().context("waiting for the daemon")?;
    if !status.success() {
        bail!("the daemon ended with {status}");
    }
    Ok(())
}

/// Where the development daemon listens and keeps its sessions.
fn dev_paths() -> (PathBuf, PathBuf) {
    let target = cmd::workspace_root().join("target");
    (target.join("capstats.sock"), target.join("capstats-state"))
}

/// Starts `capstats -d` on a socket under `target/`, creates the session `demo`
/// (`udp port 9` on `lo`), sends it ten datagrams over loopback and polls it.
fn start_daemon(capstats: &Path) -> anyhow::Result<std::process::Child> {
    let (socket, state) = dev_paths();
    let mut command = Command::new(capstats);
    command
        .arg("-d")
        .arg("-s")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        // The development daemon's counters live while it runs: Ctrl-C removes them.
        .arg("--pin-dir")
        .arg("/sys/fs/bpf/capstats-dev")
        .arg("--detach-on-exit");
    println!("    $ {} &", cmd::display(&command));
    let mut daemon = command
        .spawn()
        .with_context(|| format!("cannot start {}", capstats.display()))?;
    // Until the socket answers, or the daemon gives up (another one running, say).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = daemon.try_wait()? {
            bail!("the daemon stopped at once ({status}); its message is above");
        }
        if std::time::Instant::now() > deadline {
            let _ = daemon.kill();
            bail!(
                "the daemon did not answer on {} within 10 s",
                socket.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let client = |args: &[&str]| {
        let mut command = Command::new(capstats);
        command.arg("-s").arg(&socket).args(args);
        command
    };
    // A session of an earlier run is restored from target/: start it afresh.
    let _ = cmd::succeeds(&mut client(&["stop", "demo"]));
    cmd::run(&mut client(&[
        "new",
        "demo",
        "interface",
        "lo",
        "filter",
        "udp port 9",
    ]))?;
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").context("a loopback UDP socket")?;
    for _ in 0..10 {
        // Port 9 (discard): nothing listens; the kernel counts the datagram anyway.
        sender
            .send_to(b"hello, capstats", "127.0.0.1:9")
            .context("send over loopback")?;
    }
    println!(
        "    (sent 10 UDP datagrams to 127.0.0.1:9 over lo: 10 packets, as tcpdump -i lo shows them)"
    );
    cmd::run(&mut client(&["poll"]))?;
    // The binary by its path: it is not on PATH, and /usr/bin/capstats may be Zeek's.
    let shown = |args: &[&str]| {
        let line = cmd::display(&client(args));
        let rest = line.strip_prefix("capstats").unwrap_or(&line);
        format!("{}{rest}", capstats.display())
    };
    println!(
        "\n    The daemon runs in the foreground; Ctrl-C stops it. In another terminal:\n\n\
         \x20     {}\n\
         \x20     {}\n\
         \x20     {}\n\
         \x20     {}\n",
        shown(&["new", "web", "interface", "lo", "filter", "tcp port 80"]),
        shown(&["watch", "demo", "frequency", "1"]),
        shown(&["list"]),
        shown(&["--json", "poll"]),
    );
    Ok(daemon)
}

/// `capstats test` on corpus captures: counting in the kernel without any daemon.
fn show(capstats: &Path, corpus: &Path) -> anyhow::Result<()> {
    // Ours by path: Zeek's unrelated `capstats` may be installed as /usr/bin/capstats.
    for &(capture, expressions) in SHOWCASE {
        let file = corpus.join(capture);
        println!("\n    {capture}");
        for &expression in expressions {
            let mut command = Command::new(capstats);
            command.arg("test").arg(&file).arg(expression);
            let out = command
                .output()
                .with_context(|| format!("cannot start {}", capstats.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                bail!(
                    "`{}` failed ({}): {}",
                    cmd::display(&command),
                    out.status,
                    stderr.trim()
                );
            }
            println!(
                "    {:<50} {}",
                format!("capstats test FILE '{expression}'"),
                stdout.trim()
            );
            for line in stderr.lines() {
                println!("    {:<50} {line}", "");
            }
        }
    }

    let (capture, expression) = DUMP;
    println!("\n    and what runs in the kernel for '{expression}':\n");
    cmd::run(
        Command::new(capstats)
            .arg("test")
            .arg("--dump")
            .arg(corpus.join(capture))
            .arg(expression),
    )
}
