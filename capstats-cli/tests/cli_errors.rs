//! `capstats test` on bad input: a clear message on stderr, exit code 1, nothing else.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sample() -> PathBuf {
    capstats_testkit::corpus::file("pcap/libpcap-filter/dhcp-rfc3004.pcap").unwrap()
}

fn capstats(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstats"))
        .args(args)
        .output()
        .expect("run capstats")
}

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(stderr.starts_with("capstats: "), "{stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_bad_expression_gets_libpcaps_message() {
    let file = sample();
    let out = capstats(&["test", file.to_str().unwrap(), "tcp", "port", "99999"]);
    assert_fails_with(
        &out,
        "invalid filter expression \"tcp port 99999\": illegal port number 99999 > 65535",
    );
    let out = capstats(&["test", file.to_str().unwrap(), "filter", "host"]);
    assert_fails_with(&out, "syntax error");
}

#[test]
fn a_missing_or_corrupt_file_is_named() {
    let out = capstats(&["test", "/nonexistent/trace.pcap", "tcp"]);
    assert_fails_with(&out, "cannot open capture file /nonexistent/trace.pcap");
    let out = capstats(&["test", env!("CARGO_MANIFEST_DIR"), "tcp"]);
    assert_fails_with(&out, "cannot open capture file");
    let out = capstats(&[
        "test",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        "tcp",
    ]);
    assert_fails_with(&out, "cannot open capture file");
}

#[test]
fn a_bad_netmask_is_refused() {
    let file = sample();
    let out = capstats(&[
        "test",
        "--netmask",
        "255.0",
        file.to_str().unwrap(),
        "ip broadcast",
    ]);
    assert_fails_with(&out, "--netmask \"255.0\" is not a dotted quad");
    let out = capstats(&[
        "test",
        "--netmask",
        "unknown",
        file.to_str().unwrap(),
        "ip broadcast",
    ]);
    assert_fails_with(&out, "netmask not known");
}

#[test]
fn a_capture_file_has_no_direction() {
    let file = sample();
    let out = capstats(&["test", file.to_str().unwrap(), "inbound"]);
    // libpcap refuses these for a savefile handle (capstats-ebpf refuses them too where
    // libpcap compiles them, for a bare link type: see its invalid_filters test).
    assert_fails_with(
        &out,
        "inbound/outbound not supported on Ethernet when reading savefiles",
    );
    let out = capstats(&["test", file.to_str().unwrap(), "ifindex", "2"]);
    assert_fails_with(
        &out,
        "ifindex not supported on Ethernet when reading savefiles",
    );
}

/// Without root it says so, after checking what it can check for anybody.
#[test]
#[cfg_attr(
    not(feature = "kernel-tests"),
    ignore = "runs `capstats test` as root: `cargo xtask test` runs it"
)]
fn without_root_it_says_root_is_needed() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test drops to nobody and must start as root"
    );
    let file = sample();
    // The binary and the corpus must be readable by nobody for this to mean anything.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_capstats"))
        .args(["test", file.to_str().unwrap(), "tcp"])
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Permission denied") && stderr.contains("cannot open capture file") {
        panic!(
            "nobody cannot read {}: make the corpus world-readable",
            file.display()
        );
    }
    assert_fails_with(&out, "needs root");
}

#[test]
#[cfg_attr(
    not(feature = "kernel-tests"),
    ignore = "runs `capstats test` as root: `cargo xtask test` runs it"
)]
fn a_good_run_prints_packets_and_bytes() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "capstats test loads eBPF programs: run as root"
    );
    let file = sample();
    let out = capstats(&[
        "test",
        file.to_str().unwrap(),
        "filter",
        "ip",
        "src",
        "0.0.0.0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "packets=2 bytes=688\n"
    );
    let out = capstats(&["test", "--json", file.to_str().unwrap(), "udp"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["records"], 4);
    assert_eq!(json["packets"], 4);
    assert_eq!(json["filter"], "udp");
}
