//! tcpdump as an oracle: capture on an interface inside a namespace into a file, stop,
//! and read back what it recorded.
//!
//! tcpdump records a frame whose VLAN tag the kernel kept in metadata with the tag put
//! back into the frame, so its record lengths are wire lengths, 4 bytes more than the
//! length the socket and TC hooks see for such a frame.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::NetNs;

/// tcpdump's ring (`-B`, KiB). On an interface with segmentation offloads (veth has
/// them) libpcap sizes each slot for 64 KiB frames, so its default 2 MiB holds only 32
/// frames and a burst written in one go overflows it; 32 MiB holds 512.
const RING_KIB: &str = "32768";
/// How long tcpdump may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `tcpdump -i IF -w FILE EXPR`, killed on drop if not [stopped](Tcpdump::stop),
/// and when the thread that started it ends.
#[derive(Debug)]
pub struct Tcpdump {
    child: Option<Child>,
    /// tcpdump's standard error, line by line, from a reader thread.
    stderr: Receiver<String>,
    path: PathBuf,
    expression: String,
}

/// What a stopped tcpdump recorded and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The original (wire) length of each record, in order.
    pub lengths: Vec<u32>,
    /// "N packets received by filter": the kernel's count of matches.
    pub received_by_filter: u64,
    /// "N packets dropped by kernel".
    pub dropped_by_kernel: u64,
}

impl Tcpdump {
    /// Starts capturing on `interface` in `ns` into `path`, and returns once tcpdump
    /// says it is listening (its filter is attached from then on). Runs as root
    /// (`-Z root`), unbuffered (`-U`, `--immediate-mode`), with a 32 MiB ring
    /// ([`Recorded::dropped_by_kernel`] tells if it overflowed).
    ///
    /// # Errors
    /// When tcpdump cannot start or exits before listening (a bad expression).
    pub fn start(
        ns: &NetNs,
        interface: &str,
        expression: &str,
        path: &Path,
    ) -> anyhow::Result<Self> {
        let mut command = ns.command("tcpdump");
        command
            .args([
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-B",
                RING_KIB,
                "-w",
            ])
            .arg(path)
            .arg(expression)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the test dies without dropping us, tcpdump dies too.
        capstats_testkit::launch::dies_with_spawner(&mut command, libc::SIGKILL);
        let line = crate::cmd::command_line(&command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run `{line}`"))?;
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for text in stderr.lines().map_while(Result::ok) {
                if sender.send(text).is_err() {
                    break;
                }
            }
        });
        let this = Self {
            child: Some(child),
            stderr: lines,
            path: path.to_owned(),
            expression: expression.to_owned(),
        };
        // "tcpdump: listening on IF, link-type ...": its filter is attached.
        let deadline = Instant::now() + START_TIMEOUT;
        let mut said = String::new();
        loop {
            match this
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(text) if text.contains("listening on") => return Ok(this),
                Ok(text) => said += &(text + "\n"),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("`{line}` ended before listening: {}", said.trim())
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "`{line}` did not say it was listening within {START_TIMEOUT:?}: {}",
                        said.trim()
                    )
                }
            }
        }
    }

    /// Stops tcpdump (`SIGINT`, as Ctrl-C), waits for it, and reads its file and summary.
    ///
    /// # Errors
    /// When tcpdump fails, its summary cannot be parsed, or its file cannot be read.
    pub fn stop(mut self) -> anyhow::Result<Recorded> {
        let mut child = self.child.take().expect("a running tcpdump");
        // SAFETY: signals our own child, which has not been waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let status = child.wait()?;
        let said: String = self.stderr.iter().map(|text| text + "\n").collect();
        if !status.success() {
            bail!(
                "tcpdump {:?} failed ({status}): {}",
                self.expression,
                said.trim()
            );
        }
        // "0 packets dropped by kernel", but "1 packet received by filter".
        let count = |what: &str| -> anyhow::Result<u64> {
            said.lines()
                .find_map(|line| {
                    let (number, rest) = line.trim().split_once(' ')?;
                    let rest = rest
                        .strip_prefix("packets ")
                        .or_else(|| rest.strip_prefix("packet "))?;
                    if rest == what {
                        number.parse().ok()
                    } else {
                        None
                    }
                })
                .with_context(|| format!("tcpdump said no \"N packets {what}\": {said}"))
        };
        let received_by_filter = count("received by filter")?;
        let dropped_by_kernel = count("dropped by kernel")?;
        let mut capture = pcap::Capture::from_file(&self.path)
            .with_context(|| format!("cannot read tcpdump's capture {}", self.path.display()))?;
        let mut lengths = Vec::new();
        loop {
            match capture.next_packet() {
                Ok(packet) => lengths.push(packet.header.len),
                Err(pcap::Error::NoMorePackets) => break,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", self.path.display()));
                }
            }
        }
        Ok(Recorded {
            lengths,
            received_by_filter,
            dropped_by_kernel,
        })
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
