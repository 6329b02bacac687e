//! Every error the client and the daemon report: exit code 1 and a clear message on
//! stderr, and afterwards a daemon that still serves with nothing changed (`list
//! --json` as before, field for field, but for `read_at`, the time of the reading).
//! At the protocol level, raw lines on the socket: each bad request gets an error
//! response line and the same connection goes on. And `watch`: bad periods are
//! refused; a good one prints rates.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::MAX_REQUEST_BYTES;
use capstats_common::names::MAX_NAME_BYTES;
use capstats_common::protocol::{ErrorKind, Reply, Response};
use capstats_tests::daemon::rig::{self, Setup};
use capstats_tests::require_root;

const TEST: &str = "daemon_errors";

fn setup(tag: &str) -> anyhow::Result<Setup> {
    Setup::start(tag)
}

/// A reply without the times its counters were read.
fn unread(mut reply: Reply) -> Reply {
    match &mut reply {
        Reply::Session(s) | Reply::Stopped(s) => s.read_at = None,
        Reply::Sessions(all) => all.iter_mut().for_each(|s| s.read_at = None),
    }
    reply
}

#[test]
fn every_client_error_exits_1_with_a_message_and_changes_nothing() -> anyhow::Result<()> {
    require_root(TEST);
    let started = Instant::now();
    let mut setup = setup("errors")?;
    let (client, interface) = (&setup.client, setup.rig.interface().to_owned());
    client.ok(&[
        "new",
        "web",
        "interface",
        &interface,
        "filter",
        "tcp port 80",
    ])?;
    client.ok(&[
        "new",
        "dns",
        "interface",
        &interface,
        "filter",
        "udp port 53",
    ])?;
    // Some counts, so that a reset would show.
    let sender = setup.rig.sender_a()?;
    sender.send_n(&rig::udp_a_to_b(53, 10), 3)?;
    client.settle("dns", 3, Duration::from_secs(10), Duration::from_millis(50))?;
    let before = client.listed()?;

    let hint = format!(
        "interface {interface} must come before the filter expression, not in it: capstats new bad interface {interface} tcp port 80"
    );
    let hint_dashed = format!(
        "hook tc, interface {interface} must come before the filter expression, not in it: capstats new bad hook tc interface {interface} udp"
    );
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let longest = "y".repeat(MAX_NAME_BYTES);
    // (arguments, what stderr must say)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // libpcap's own messages.
        (
            vec!["new", "bad", "interface", &interface, "filter", "tcp port"],
            "syntax error",
        ),
        (
            vec!["new", "bad", "interface", &interface, "port", "99999"],
            "illegal port number 99999 > 65535",
        ),
        (
            vec![
                "new",
                "bad",
                "interface",
                &interface,
                "ip",
                "proto",
                "nosuch",
            ],
            "unknown ip proto 'nosuch'",
        ),
        (vec!["modify", "web", "tcp", "port"], "syntax error"),
        // tcpdump's habit of options after the expression: the right form is named.
        (
            vec!["new", "bad", "tcp", "port", "80", "interface", &interface],
            &hint,
        ),
        (
            vec!["new", "bad", "udp", "hook", "tc", "-i", &interface],
            &hint_dashed,
        ),
        (
            vec!["modify", "web", "udp", "hook", "xdp"],
            "modify changes only the filter expression",
        ),
        // No expression would widen the session to every packet: refused.
        (vec!["modify", "web"], "needs a filter expression"),
        (vec!["modify", "web", ""], "capstats new NAME \"\""),
        (
            vec!["modify", "web", "filter", " "],
            "needs a filter expression",
        ),
        (
            vec!["new", "bad", "interface", "nosuch0", "filter", "udp"],
            "no interface named \"nosuch0\"",
        ),
        (
            vec!["new", "web", "interface", &interface, "filter", "udp"],
            "a session named \"web\" exists already",
        ),
        (vec!["show", "nosuch"], "no session named \"nosuch\""),
        (
            vec!["modify", "nosuch", "udp"],
            "no session named \"nosuch\"",
        ),
        (vec!["stop", "nosuch"], "no session named \"nosuch\""),
        (vec!["poll", "nosuch"], "no session named \"nosuch\""),
        (vec!["poll", "web", "nosuch"], "no session named \"nosuch\""),
        (
            vec!["new", "", "interface", &interface, "filter", "udp"],
            "a session name cannot be empty",
        ),
        (
            vec!["new", "a b", "interface", &interface, "filter", "udp"],
            "contains a space",
        ),
        (
            vec!["new", "a\tb", "interface", &interface, "filter", "udp"],
            "contains a tab",
        ),
        (
            vec!["new", &long, "interface", &interface, "filter", "udp"],
            "is 65 bytes long; at most 64 are allowed",
        ),
        (
            vec!["watch", "web", "frequency", "0"],
            "frequency must be a positive number of seconds, not 0",
        ),
        // Negative numbers reach capstats (not taken for options) and are refused.
        (
            vec!["watch", "web", "frequency", "-1"],
            "frequency must be a positive number of seconds, not -1",
        ),
        (
            vec!["watch", "web", "frequency", "soon"],
            "frequency \"soon\" is not a number",
        ),
        (
            vec!["watch", "nosuch", "frequency", "1"],
            "no session named \"nosuch\"",
        ),
    ];
    let mut failures = Vec::new();
    for (args, says) in &cases {
        let shown = args.join(" ");
        match client.fails(args) {
            Ok(outcome) if outcome.stderr.contains(says) => {
                println!("capstats {shown:<40} -> {}", outcome.stderr.trim());
            }
            Ok(outcome) => failures.push(format!(
                "capstats {shown}: stderr should say {says:?}: {outcome}"
            )),
            Err(e) => failures.push(format!("{e:#}")),
        }
        let now = client.listed()?;
        if now != before {
            failures.push(format!(
                "capstats {shown} changed the sessions:\nbefore {before:?}\nafter  {now:?}"
            ));
        }
    }
    ensure!(
        setup.daemon.is_running(),
        "the daemon died; its log:\n{}",
        setup.daemon.log()
    );
    // Still serving: a 64-byte name is fine, and the old sessions still count.
    client.ok(&["new", &longest, "interface", &interface, "filter", "udp"])?;
    client.ok(&["stop", &longest])?;
    // tcpdump's -i is `interface`.
    let dashed = client.sessions(&["new", "dashed", "-i", &interface, "udp"])?;
    ensure!(
        dashed.len() == 1 && dashed[0].interface == interface && dashed[0].filter == "udp",
        "{dashed:?}"
    );
    // The completion scripts' view of the sessions.
    let names = std::process::Command::new(capstats_tests::daemon::binary()?)
        .arg("__complete-sessions")
        .arg(setup.daemon.socket())
        .output()?;
    let names = String::from_utf8_lossy(&names.stdout);
    ensure!(
        names == "dashed\ndns\nweb\n",
        "__complete-sessions: {names:?}"
    );
    client.ok(&["stop", "dashed"])?;
    sender.send_n(&rig::udp_a_to_b(53, 10), 2)?;
    let dns = client.settle("dns", 5, Duration::from_secs(10), Duration::from_millis(50))?;
    ensure!(dns.packets == Some(5), "dns: {dns:?}");
    println!("{} error cases in {:.1?}", cases.len(), started.elapsed());
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// One connection, raw lines.
struct Connection {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    fn open(setup: &Setup) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(setup.daemon.socket())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Writes `bytes` and a newline, and reads one response line.
    fn ask(&mut self, bytes: &[u8]) -> anyhow::Result<Response> {
        self.writer.write_all(bytes)?;
        self.writer.write_all(b"\n")?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .context("reading the daemon's response")?;
        ensure!(
            line.ends_with('\n'),
            "the daemon closed the connection (read {line:?})"
        );
        serde_json::from_str(&line).with_context(|| format!("the daemon answered {line:?}"))
    }
}

#[test]
fn bad_requests_get_an_error_line_and_the_connection_goes_on() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = setup("protocol")?;
    let interface = setup.rig.interface().to_owned();
    setup.client.ok(&[
        "new",
        "web",
        "interface",
        &interface,
        "filter",
        "tcp port 80",
    ])?;
    let list = br#"{"version":1,"command":"list"}"#;
    let mut connection = Connection::open(&setup)?;
    let Response::Ok(listed) = connection.ask(list)? else {
        bail!("list failed");
    };
    let listed = unread(listed);
    ensure!(
        matches!(&listed, Reply::Sessions(s) if s.len() == 1),
        "{listed:?}"
    );

    let mut oversized = br#"{"version":1,"command":"list","pad":""#.to_vec();
    oversized.resize(MAX_REQUEST_BYTES + 1000, b'x');
    oversized.extend(br#""}"#);
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "malformed JSON",
            br#"{"version":1,"#.to_vec(),
            "the request is not JSON".to_owned(),
        ),
        (
            "an empty line",
            Vec::new(),
            "the request is not JSON".to_owned(),
        ),
        (
            "not an object",
            b"[1,2]".to_vec(),
            "must be a JSON object".to_owned(),
        ),
        (
            "unknown command",
            br#"{"version":1,"command":"reboot"}"#.to_vec(),
            "unknown variant `reboot`".to_owned(),
        ),
        (
            "unknown field",
            br#"{"version":1,"command":"list","extra":1}"#.to_vec(),
            "unknown field `extra`".to_owned(),
        ),
        (
            "missing field",
            br#"{"version":1,"command":"show"}"#.to_vec(),
            "missing field `name`".to_owned(),
        ),
        (
            "wrong version",
            br#"{"version":2,"command":"list"}"#.to_vec(),
            "protocol version 2 is not spoken here".to_owned(),
        ),
        (
            "no version",
            br#"{"command":"list"}"#.to_vec(),
            "no \"version\"".to_owned(),
        ),
        (
            "version as a string",
            br#"{"version":"1","command":"list"}"#.to_vec(),
            "\"version\" must be a number".to_owned(),
        ),
        ("not UTF-8", b"\xff\xfe{}".to_vec(), "not UTF-8".to_owned()),
        (
            "an oversized line",
            oversized,
            format!("request longer than {MAX_REQUEST_BYTES} bytes"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes, says) in &cases {
        match connection.ask(bytes)? {
            Response::Error(e)
                if e.kind == ErrorKind::BadRequest && e.message.contains(says.as_str()) =>
            {
                println!("{what:<20} -> {:?}: {}", e.kind, e.message);
            }
            other => failures.push(format!(
                "{what}: expected a bad_request error saying {says:?}, got {other:?}"
            )),
        }
        // The same connection answers the next request as before.
        match connection.ask(list)? {
            Response::Ok(again) if unread(again.clone()) == listed => {}
            other => failures.push(format!("after {what}: list answered {other:?}")),
        }
    }
    // An unknown session is a request error of its own kind, on the same connection.
    match connection.ask(br#"{"version":1,"command":"show","name":"nosuch"}"#)? {
        Response::Error(e) if e.kind == ErrorKind::UnknownSession => {}
        other => failures.push(format!("show nosuch: {other:?}")),
    }
    // A modify without an expression is refused by the daemon too (not only by the
    // client): it would widen the session to every packet.
    for filter in ["", " \\t "] {
        let line =
            format!(r#"{{"version":1,"command":"modify","name":"web","filter":"{filter}"}}"#);
        match connection.ask(line.as_bytes())? {
            Response::Error(e)
                if e.kind == ErrorKind::InvalidFilter
                    && e.message.contains("needs a filter expression") => {}
            other => failures.push(format!("{line}: {other:?}")),
        }
    }
    match connection.ask(list)? {
        Response::Ok(again) if unread(again.clone()) == listed => {}
        other => failures.push(format!("after an empty modify: list answered {other:?}")),
    }
    // A new connection and the client are served as before.
    ensure!(
        matches!(Connection::open(&setup)?.ask(list)?, Response::Ok(again) if unread(again.clone()) == listed),
        "a new connection is not served as before"
    );
    setup.client.ok(&["show", "web"])?;
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn watch_prints_rates_in_json() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = setup("watch")?;
    let interface = setup.rig.interface().to_owned();
    let client = &setup.client;
    client.ok(&["new", "w", "interface", &interface, "filter", "udp"])?;
    let frame = rig::udp_a_to_b(53, 58);
    let watch = client.json().spawn(&["watch", "w", "frequency", "0.2"])?;
    // 1.2 s of traffic at 500 frames a second, then stop watching.
    let sender = setup.rig.sender_a()?;
    let took = sender.send_paced(std::iter::repeat_n(frame.as_slice(), 600), 500)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut watch = watch;
    ensure!(watch.is_running(), "watch ended by itself");
    let outcome = watch.interrupt()?;
    let lines: Vec<serde_json::Value> = outcome
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("watch --json printed {outcome}"))?;
    println!(
        "600 frames in {took:.2?}; watch printed {} lines, e.g. {}",
        lines.len(),
        lines.get(2).map(ToString::to_string).unwrap_or_default()
    );
    ensure!(
        lines.len() >= 5,
        "watch printed {} lines in {:.1?}: {outcome}",
        lines.len(),
        took
    );
    let number = |line: &serde_json::Value, key: &str| {
        line[key]
            .as_f64()
            .with_context(|| format!("no number {key:?} in {line}"))
    };
    let mut previous: Option<(f64, f64)> = None;
    let mut moving = 0;
    for line in &lines {
        ensure!(line["name"] == "w", "{line}");
        let (packets, bytes) = (number(line, "packets")?, number(line, "bytes")?);
        let (pps, bps, interval) = (
            number(line, "pps")?,
            number(line, "bps")?,
            number(line, "interval")?,
        );
        ensure!(
            (0.15..1.0).contains(&interval),
            "interval {interval} for a 0.2 s period: {line}"
        );
        if let Some((last_packets, last_bytes)) = previous {
            // The rates are the differences over the interval.
            let (want_pps, want_bps) = (
                (packets - last_packets) / interval,
                (bytes - last_bytes) * 8.0 / interval,
            );
            ensure!(
                (pps - want_pps).abs() < 1e-6 * want_pps.max(1.0)
                    && (bps - want_bps).abs() < 1e-6 * want_bps.max(1.0),
                "pps {pps}, bps {bps}; the counters say {want_pps}, {want_bps}: {line}"
            );
        }
        if pps > 0.0 {
            moving += 1;
            ensure!(
                (bps - pps * 8.0 * frame.len() as f64).abs() < 1e-6 * bps,
                "bps {bps} is not pps {pps} × {} bytes × 8: {line}",
                frame.len()
            );
        }
        previous = Some((packets, bytes));
    }
    ensure!(moving >= 3, "only {moving} lines show traffic: {outcome}");
    Ok(())
}
