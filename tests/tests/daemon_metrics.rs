//! Monitoring: the daemon's `/metrics` endpoint (`--metrics ADDR:PORT`), `poll
//! --prometheus` and the Zeek-capstats lines of `poll --zeek` and `watch --zeek`.
//!
//! The exposition is checked by an outside parser, the Python `prometheus_client`
//! (Debian's `python3-prometheus-client`, which `cargo xtask test` installs), run as
//! `/usr/bin/python3`: every sample it reads back must be the one we meant, label
//! values with quotes, backslashes and line feeds included.
//!
//! The daemon runs in namespace B (`nsenter --net`): its 127.0.0.1 is B's loopback,
//! brought up by the test, and the test scrapes it from a thread inside B.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use capstats_common::metrics::{DaemonInfo, render};
use capstats_common::protocol::Session;
use capstats_tests::daemon::metrics::{free_loopback_addrs, get, self_signed};
use capstats_tests::daemon::rig::{self, Rig};
use capstats_tests::daemon::{Client, Daemon, DaemonSpec, PinDir, START_TIMEOUT};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_metrics";
const PYTHON: &str = "/usr/bin/python3";

/// Parses an exposition from stdin with prometheus_client and prints every sample as
/// JSON: `[[name, {labels}, value], ...]`, with each family's type as `# TYPE` info.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = [], {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"samples": samples, "types": types}))
"#;

/// One parsed sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The exposition through prometheus_client; fails loudly if it is not installed.
fn parse_exposition(text: &str) -> anyhow::Result<(Vec<Sample>, BTreeMap<String, String>)> {
    ensure!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: install Debian's python3-prometheus-client (cargo xtask test does)"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {PYTHON}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("No module named"),
        "the Python prometheus_client is missing: install Debian's python3-prometheus-client \
         (cargo xtask test does): {stderr}"
    );
    ensure!(
        out.status.success(),
        "prometheus_client refused the exposition ({stderr}):\n{text}"
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let samples = value["samples"]
        .as_array()
        .context("samples")?
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            (
                s[0].as_str().unwrap_or_default().to_owned(),
                labels,
                s[2].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let types = value["types"]
        .as_object()
        .context("types")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    Ok((samples, types))
}

/// The value of `name` for session `session`.
fn value_of(samples: &[Sample], name: &str, session: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, labels, _)| {
            n == name && labels.get("session").map(String::as_str) == Some(session)
        })
        .map(|(_, _, v)| *v)
}

fn session(name: &str, filter: &str) -> Session {
    Session {
        name: name.into(),
        interface: "veth-b".into(),
        filter: filter.into(),
        packets: Some(7),
        bytes: Some(420),
        up: true,
        hook: capstats_common::hook::HookName::Socket,
        direction: capstats_common::hook::Direction::Both,
        mode: None,
        packets_counted: None,
        created: "2026-01-01T00:00:00Z".into(),
        modified: "2026-01-01T00:00:00Z".into(),
        counting_since: None,
        survives_daemon: None,
        compiling: false,
        reason: None,
        link: None,
        read_at: None,
    }
}

/// Label values with every character that needs escaping read back as they were.
#[test]
fn prometheus_client_reads_the_exposition_back() -> anyhow::Result<()> {
    let nasty = "tcp port 80 and \"quoted\" \\ back\\slash\nnext line \\n not a line feed \\\"";
    let text = render(
        &[session("nasty", nasty), session("plain", "")],
        &DaemonInfo {
            version: "0.3.0".into(),
            request_errors: Some(1),
            scrape_errors: Some(0),
        },
    );
    let (samples, types) = parse_exposition(&text)?;
    let info = samples
        .iter()
        .find(|(n, l, _)| n == "capstats_session_info" && l["session"] == "nasty")
        .context("no capstats_session_info for nasty")?;
    assert_eq!(info.1["filter"], nasty);
    assert_eq!(info.2, 1.0);
    assert_eq!(
        value_of(&samples, "capstats_session_packets_total", "nasty"),
        Some(7.0)
    );
    assert_eq!(
        value_of(&samples, "capstats_session_bytes_total", "plain"),
        Some(420.0)
    );
    assert_eq!(
        value_of(&samples, "capstats_session_up", "plain"),
        Some(1.0)
    );
    for (family, kind) in [
        ("capstats_session_packets", "counter"),
        ("capstats_session_bytes", "counter"),
        ("capstats_session_up", "gauge"),
        ("capstats_session_info", "gauge"),
        ("capstats_sessions", "gauge"),
        ("capstats_build_info", "gauge"),
        ("capstats_request_errors", "counter"),
        ("capstats_scrape_errors", "counter"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    Ok(())
}

/// A ZeekControl-style reader: split on spaces, the first field the time, each other
/// field on its first `=`; every value a float.
fn zeek_fields(line: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut fields = line.split(' ');
    let time = fields.next().context("empty line")?;
    time.parse::<f64>()
        .with_context(|| format!("time {time:?} in {line:?}"))?;
    let mut out = BTreeMap::new();
    for field in fields {
        let (key, value) = field
            .split_once('=')
            .with_context(|| format!("{field:?} in {line:?}"))?;
        value
            .parse::<f64>()
            .with_context(|| format!("{key}={value:?} is not a number in {line:?}"))?;
        out.insert(key.to_owned(), value.to_owned());
    }
    for key in ["s", "pkts", "kpps", "kbytes", "mbps"] {
        ensure!(out.contains_key(key), "no {key} in {line:?}");
    }
    Ok(out)
}

/// Frames through the veth pair; a scrape says exactly how many, as does `poll
/// --prometheus`, both read by prometheus_client; `poll --zeek` and `watch --zeek` read
/// by a ZeekControl-style parser; other paths 404.
#[test]
fn metrics_endpoint_reports_what_was_sent() -> anyhow::Result<()> {
    require_root(TEST);
    const FRAMES: u64 = 25;
    let rig = Rig::new("metrics")?;
    let scratch = ScratchDir::new("metrics")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let _pins: PinDir = spec.pin_guard();
    rig.ns_b.ip(&["link", "set", "lo", "up"])?;
    // Any port free in B's fresh stack.
    let [addr] = free_loopback_addrs(&rig.ns_b, 1)?[..] else {
        bail!("no free port");
    };
    let daemon = Daemon::start(
        &rig.ns_b,
        &spec.clone().serving_metrics(addr, None),
        &scratch.join("daemon.log"),
    )?;
    let client = Client::new(&spec.socket)?;
    let interface = rig.interface().to_owned();
    // A backslash-escaped keyword and a line feed: a valid expression that needs
    // escaping in a label.
    let tricky = "ether proto \\ip\nand udp";
    client.ok(&[
        "new",
        "udp",
        "interface",
        &interface,
        "hook",
        "tc",
        "filter",
        "udp",
    ])?;
    client.ok(&["new", "tricky", "interface", &interface, tricky])?;

    let frame = rig::udp_a_to_b(53, 100);
    rig.sender_a()?.send_n(&frame, FRAMES)?;
    client.settle(
        "udp",
        FRAMES,
        Duration::from_secs(10),
        Duration::from_millis(100),
    )?;
    client.settle(
        "tricky",
        FRAMES,
        Duration::from_secs(10),
        Duration::from_millis(100),
    )?;

    let (status, body) = get(&rig.ns_b, addr, "/metrics")?;
    ensure!(status == 200, "GET /metrics: {status}\n{body}");
    let (samples, _) = parse_exposition(&body)?;
    for name in ["udp", "tricky"] {
        assert_eq!(
            value_of(&samples, "capstats_session_packets_total", name),
            Some(FRAMES as f64),
            "{name}:\n{body}"
        );
        assert_eq!(
            value_of(&samples, "capstats_session_bytes_total", name),
            Some((FRAMES * frame.len() as u64) as f64),
            "{name}:\n{body}"
        );
        assert_eq!(value_of(&samples, "capstats_session_up", name), Some(1.0));
    }
    let info = samples
        .iter()
        .find(|(n, l, _)| n == "capstats_session_info" && l["session"] == "tricky")
        .context("no info for tricky")?;
    assert_eq!(info.1["filter"], tricky);
    assert_eq!(info.1["interface"], interface);
    assert_eq!(info.1["hook"], "socket");
    assert_eq!(
        samples
            .iter()
            .find(|(n, _, _)| n == "capstats_sessions")
            .map(|s| s.2),
        Some(2.0)
    );
    // The failed request below is counted.
    let errors = |samples: &[Sample]| {
        samples
            .iter()
            .find(|(n, _, _)| n == "capstats_request_errors_total")
            .map(|s| s.2)
    };
    let before = errors(&samples).context("no capstats_request_errors_total")?;
    client.fails(&["show", "nosuch"])?;
    let (_, body) = get(&rig.ns_b, addr, "/metrics")?;
    assert_eq!(errors(&parse_exposition(&body)?.0), Some(before + 1.0));

    for path in ["/", "/metric", "/metrics/x"] {
        assert_eq!(get(&rig.ns_b, addr, path)?.0, 404, "{path}");
    }

    // The same from the client, for the textfile collector.
    let text = client.ok(&["poll", "--prometheus"])?;
    let (samples, _) = parse_exposition(&text)?;
    assert_eq!(
        value_of(&samples, "capstats_session_packets_total", "udp"),
        Some(FRAMES as f64),
        "{text}"
    );

    // Zeek's fields: one line per session.
    let text = client.ok(&["poll", "--zeek", "udp"])?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.len() == 1, "poll --zeek udp printed {text:?}");
    let fields = zeek_fields(lines[0])?;
    assert_eq!(fields["pkts"].parse::<f64>()?, FRAMES as f64);
    let kbytes: f64 = fields["kbytes"].parse()?;
    assert!((kbytes - (FRAMES * frame.len() as u64) as f64 / 1024.0).abs() < 0.001);
    let text = client.ok(&["poll", "--zeek"])?;
    ensure!(text.lines().count() == 2, "poll --zeek printed {text:?}");

    // watch --zeek: a line per period; frames sent meanwhile show up in pkts.
    let watch = client.spawn(&["watch", "udp", "frequency", "0.2", "--zeek"])?;
    std::thread::sleep(Duration::from_millis(300));
    rig.sender_a()?.send_n(&frame, FRAMES)?;
    std::thread::sleep(Duration::from_millis(900));
    let outcome = watch.interrupt()?;
    let mut sent = 0.0;
    let mut periods = 0;
    for line in outcome.stdout.lines() {
        let fields = zeek_fields(line)?;
        let s: f64 = fields["s"].parse()?;
        ensure!(s > 0.1 && s < 1.0, "interval {s} in {line:?}");
        sent += fields["pkts"].parse::<f64>()?;
        periods += 1;
    }
    ensure!(periods >= 3, "watch --zeek printed {:?}", outcome.stdout);
    // Frames still arriving when the watch ended are in no line: at most all of them.
    ensure!(
        sent <= FRAMES as f64,
        "watch --zeek counted {sent}: {:?}",
        outcome.stdout
    );

    drop(daemon);
    Ok(())
}

/// `--metrics` on an address that is taken: the daemon says so and does not start.
#[test]
fn a_taken_metrics_port_stops_the_daemon() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("metrics-taken")?;
    let scratch = ScratchDir::new("metrics-taken")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let _pins = spec.pin_guard();
    rig.ns_b.ip(&["link", "set", "lo", "up"])?;
    let listener = rig
        .ns_b
        .run(|| Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?))?;
    let addr = listener.local_addr()?;
    let mut daemon = Daemon::spawn(
        &rig.ns_b,
        &spec.clone().serving_metrics(addr, None),
        &scratch.join("daemon.log"),
    )?;
    let Some(status) = daemon.wait_exit(START_TIMEOUT)? else {
        bail!(
            "capstats -d started on a taken port; its log:\n{}",
            daemon.log()
        );
    };
    let log = daemon.log();
    ensure!(status.code() == Some(1), "exit {status}; log:\n{log}");
    ensure!(
        log.contains(&format!("cannot serve metrics on {addr}")),
        "log:\n{log}"
    );
    ensure!(!spec.socket.exists(), "the socket was left behind");
    Ok(())
}

/// What curl made of a request: the status (0 when there was no HTTP answer), the
/// response head and body, and curl's own complaint.
struct Curled {
    status: u16,
    head: String,
    body: String,
    stderr: String,
}

/// `curl` from inside `ns`, with `args` before the URL.
fn curl(rig: &Rig, url: &str, args: &[&str]) -> anyhow::Result<Curled> {
    let out = rig
        .ns_b
        .command("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--dump-header",
            "-",
        ])
        .args(args)
        .arg(url)
        .output()
        .context("curl (Debian's curl)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok(Curled {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `--web-config` as exporter-toolkit reads it, with a certificate made here
/// (openssl) and a bcrypt hash: over TLS with basic authentication, no password and a
/// wrong one get 401 (before the path is looked at), the right one the exposition;
/// plain HTTP gets no answer on the TLS port; connections that never begin their
/// handshake hold up no scrape. With users but no TLS, the same over
/// HTTP. A file capstats cannot honour in full stops the daemon, saying why.
#[test]
fn web_config_serves_tls_and_basic_auth() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("metrics-web")?;
    let scratch = ScratchDir::new("metrics-web")?;
    rig.ns_b.ip(&["link", "set", "lo", "up"])?;
    let [tls_addr, plain_addr, bad_addr] = free_loopback_addrs(&rig.ns_b, 3)?[..] else {
        bail!("no free ports");
    };
    let (cert, _key) = self_signed(scratch.path())?;
    // Cost 4, the least bcrypt has: the check is the same, only cheaper.
    let hash = bcrypt::hash("right horse", 4)?;
    let users = format!("basic_auth_users:\n  prometheus: '{hash}'\n");
    // Relative paths: from the file's own directory, as exporter-toolkit takes them.
    let tls_config = scratch.join("web-tls.yml");
    std::fs::write(
        &tls_config,
        format!("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n{users}"),
    )?;
    let auth_config = scratch.join("web-auth.yml");
    std::fs::write(&auth_config, &users)?;

    let spec = DaemonSpec::new(scratch.join("tls.sock"), scratch.join("tls-state"));
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(
        &rig.ns_b,
        &spec.clone().serving_metrics(tls_addr, Some(&tls_config)),
        &scratch.join("tls.log"),
    )?;
    Client::new(&spec.socket)?.ok(&[
        "new",
        "secret-session",
        "interface",
        rig.interface(),
        "udp",
    ])?;
    let url = format!("https://{tls_addr}/metrics");
    let ca = cert.to_str().context("path")?;
    // Connections that never begin their TLS handshake hold up nobody else.
    let _silent = rig.ns_b.run(|| {
        Ok((0..10)
            .map(|_| std::net::TcpStream::connect(tls_addr))
            .collect::<std::io::Result<Vec<_>>>()?)
    })?;
    let asked = std::time::Instant::now();
    let right = curl(
        &rig,
        &url,
        &["--cacert", ca, "--user", "prometheus:right horse"],
    )?;
    let took = asked.elapsed();
    ensure!(
        took < Duration::from_secs(3),
        "a scrape took {took:?} beside 10 silent connections"
    );
    ensure!(
        right.status == 200 && right.body.contains("session=\"secret-session\""),
        "over TLS with the password: {} {}\n{}{}",
        right.status,
        right.stderr,
        right.head,
        right.body
    );
    for (what, args) in [
        ("no password", vec!["--cacert", ca]),
        (
            "a wrong password",
            vec!["--cacert", ca, "--user", "prometheus:wrong"],
        ),
        (
            "an unknown user",
            vec!["--cacert", ca, "--user", "root:right horse"],
        ),
    ] {
        for path in ["/metrics", "/other"] {
            let got = curl(&rig, &format!("https://{tls_addr}{path}"), &args)?;
            ensure!(
                got.status == 401
                    && got.head.to_lowercase().contains("www-authenticate: basic")
                    && !got.body.contains("secret-session"),
                "{what}, {path}: {} {}\n{}{}",
                got.status,
                got.stderr,
                got.head,
                got.body
            );
        }
        println!("over TLS with {what}: 401");
    }
    // Plain HTTP on the TLS port: no HTTP answer, nothing of the sessions.
    let plain = curl(
        &rig,
        &format!("http://{tls_addr}/metrics"),
        &["--user", "prometheus:right horse"],
    )?;
    ensure!(
        plain.status == 0 && !plain.body.contains("secret-session"),
        "plain HTTP on the TLS port: {} {}\n{}",
        plain.status,
        plain.head,
        plain.body
    );
    // A certificate the client does not trust: refused by the client, as it should be.
    let untrusted = curl(&rig, &url, &["--user", "prometheus:right horse"])?;
    ensure!(
        untrusted.status == 0,
        "TLS without the CA: {}",
        untrusted.status
    );
    println!(
        "over TLS with the password: 200 in {took:?} beside 10 silent connections; \
         plain HTTP on the TLS port: {}",
        plain.stderr.trim()
    );
    ensure!(
        daemon.log().contains(&format!(
            "serving metrics on https://{tls_addr}/metrics (basic authentication"
        )),
        "{}",
        daemon.log()
    );
    drop(daemon);

    // Users without TLS: the same over plain HTTP.
    let spec = DaemonSpec::new(scratch.join("auth.sock"), scratch.join("auth-state"));
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(
        &rig.ns_b,
        &spec.clone().serving_metrics(plain_addr, Some(&auth_config)),
        &scratch.join("auth.log"),
    )?;
    let url = format!("http://{plain_addr}/metrics");
    ensure!(curl(&rig, &url, &[])?.status == 401);
    ensure!(curl(&rig, &url, &["--user", "prometheus:wrong"])?.status == 401);
    let right = curl(&rig, &url, &["--user", "prometheus:right horse"])?;
    ensure!(right.status == 200, "{} {}", right.status, right.body);
    ensure!(get(&rig.ns_b, plain_addr, "/metrics")?.0 == 401);
    drop(daemon);

    // A setting capstats does not have is refused, not ignored; a password that is
    // not a hash too.
    for (text, says) in [
        (
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_ca_file: cert.pem\n",
            "unknown field `client_ca_file`",
        ),
        (
            "basic_auth_users:\n  prometheus: plain\n",
            "not a bcrypt hash",
        ),
    ] {
        let file = scratch.join("web-bad.yml");
        std::fs::write(&file, text)?;
        let spec = DaemonSpec::new(scratch.join("bad.sock"), scratch.join("bad-state"));
        let _pins = spec.pin_guard();
        let mut daemon = Daemon::spawn(
            &rig.ns_b,
            &spec.clone().serving_metrics(bad_addr, Some(&file)),
            &scratch.join("bad.log"),
        )?;
        let Some(status) = daemon.wait_exit(START_TIMEOUT)? else {
            bail!(
                "capstats -d started with {text:?}; its log:\n{}",
                daemon.log()
            );
        };
        let log = daemon.log();
        ensure!(
            status.code() == Some(1) && log.contains(says) && log.contains("--web-config"),
            "exit {status}; log:\n{log}"
        );
        ensure!(!spec.socket.exists(), "the socket was left behind");
        println!("refused: {}", log.lines().last().unwrap_or_default());
    }
    Ok(())
}
