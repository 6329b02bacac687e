//! The daemon's `/metrics` endpoint against real scrapers.
//!
//! - A real Prometheus server (Debian's `prometheus`, which `cargo xtask test`
//!   installs; run as `/usr/bin/prometheus` by the test, with a generated config and
//!   its storage in a scratch directory) scrapes the daemon every second; its HTTP API
//!   then returns `capstats_session_packets_total` equal to the frames the test sent
//!   through the veth pair, and `capstats_session_info` with the filter as a label.
//! - 50 concurrent scrapers for 10 s: every scrape answered 200 with a well-formed
//!   exposition, while the daemon goes on serving its clients and counting.
//!
//! The daemon and Prometheus both run in namespace B (`nsenter --net`): 127.0.0.1 is
//! B's loopback, brought up by the test, and the test talks HTTP from threads inside
//! B. Nothing listens or is sent outside the test's namespaces.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_tests::daemon::metrics::{free_loopback_addrs, http_get, self_signed};
use capstats_tests::daemon::rig::{self, Rig};
use capstats_tests::daemon::{Client, Daemon, DaemonSpec};
use capstats_tests::joined;
use capstats_tests::prometheus::{HTTP_TIMEOUT, PROMTOOL, Prometheus, job, require_prometheus};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_prometheus";
/// `s` as a PromQL string literal.
fn promql_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The rig with the daemon in B serving `/metrics` on B's loopback; fields drop in
/// order: the daemon, its pins, the scratch directory, then the namespaces.
struct Setup {
    daemon: Daemon,
    client: Client,
    metrics: SocketAddr,
    /// Another free port on B's loopback (for Prometheus's API).
    spare: SocketAddr,
    _pins: capstats_tests::daemon::PinDir,
    scratch: ScratchDir,
    rig: Rig,
}

impl Setup {
    fn new(tag: &str) -> anyhow::Result<Self> {
        Self::with_web_config(tag, |_| Ok(None))
    }

    /// A daemon with `--web-config` the file `web_config` writes in the scratch
    /// directory (none when it returns `None`).
    fn with_web_config(
        tag: &str,
        web_config: impl FnOnce(&ScratchDir) -> anyhow::Result<Option<PathBuf>>,
    ) -> anyhow::Result<Self> {
        let rig = Rig::new(tag)?;
        let scratch = ScratchDir::new(tag)?;
        let web_config = web_config(&scratch)?;
        let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
        let pins = spec.pin_guard();
        rig.ns_b.ip(&["link", "set", "lo", "up"])?;
        let [metrics, spare] = free_loopback_addrs(&rig.ns_b, 2)?[..] else {
            bail!("no two free ports on B's loopback");
        };
        let daemon = Daemon::start(
            &rig.ns_b,
            &spec.clone().serving_metrics(metrics, web_config.as_deref()),
            &scratch.join("daemon.log"),
        )?;
        Ok(Self {
            daemon,
            client: Client::new(&spec.socket)?,
            metrics,
            spare,
            _pins: pins,
            scratch,
            rig,
        })
    }
}

/// Prometheus scrapes the daemon; its API reports exactly the frames sent through
/// the veth, and the filter (escapes included) as `capstats_session_info`'s label.
#[test]
fn prometheus_reports_the_packets_sent() -> anyhow::Result<()> {
    require_root(TEST);
    require_prometheus()?;
    const FRAMES: u64 = 37;
    let started = Instant::now();
    let setup = Setup::new("prom")?;
    let (ns, client) = (&setup.rig.ns_b, &setup.client);
    let interface = setup.rig.interface().to_owned();
    // A backslash-escaped keyword and a line feed: a valid expression that needs
    // escaping in a label (a pcap expression cannot hold a `"`).
    let tricky = "ether proto \\ip\nand udp";
    client.ok(&[
        "new",
        "udp",
        "interface",
        &interface,
        "filter",
        "udp and dst port 53",
    ])?;
    client.ok(&["new", "tricky", "interface", &interface, tricky])?;

    let prometheus_dir = setup.scratch.join("prometheus");
    std::fs::create_dir(&prometheus_dir)?;
    let prometheus = Prometheus::start(ns, &prometheus_dir, setup.metrics, setup.spare)?;
    let ready = started.elapsed();

    // Scraped before any frame: both counters are there, at 0.
    let zero = |v: &str| Ok(v == "0");
    let packets = |name: &str| {
        format!(
            "capstats_session_packets_total{{session={}}}",
            promql_string(name)
        )
    };
    let (_, first_scrape) = prometheus.wait_for(ns, &packets("udp"), "0 packets", zero)?;
    prometheus.wait_for(ns, &packets("tricky"), "0 packets", zero)?;

    let frame = rig::udp_a_to_b(53, 100);
    setup.rig.sender_a()?.send_n(&frame, FRAMES)?;
    let sent = Instant::now();
    let exactly = |v: &str| {
        let value: f64 = v.parse().with_context(|| format!("value {v:?}"))?;
        ensure!(
            value <= FRAMES as f64,
            "prometheus reports {value} packets, more than the {FRAMES} sent"
        );
        Ok(value == FRAMES as f64)
    };
    let (series, _) = prometheus.wait_for(ns, &packets("udp"), "the frames sent", exactly)?;
    assert_eq!(series.labels["interface"], interface);
    assert_eq!(series.labels["job"], "capstats");
    assert_eq!(series.labels["instance"], setup.metrics.to_string());
    prometheus.wait_for(ns, &packets("tricky"), "the frames sent", exactly)?;
    let counted = sent.elapsed();

    let bytes = FRAMES * frame.len() as u64;
    prometheus.wait_for(
        ns,
        "capstats_session_bytes_total{session=\"udp\"}",
        "the bytes sent",
        |v| Ok(v == bytes.to_string()),
    )?;
    let (info, _) = prometheus.wait_for(
        ns,
        "capstats_session_info{session=\"tricky\"}",
        "the info",
        |v| Ok(v == "1"),
    )?;
    assert_eq!(info.labels["filter"], tricky, "{info:?}");
    assert_eq!(info.labels["hook"], "socket");
    assert_eq!(info.labels["interface"], interface);
    // The filter label matches exactly in a selector, too.
    let by_filter = prometheus.query(
        ns,
        &format!("capstats_session_info{{filter={}}}", promql_string(tricky)),
    )?;
    ensure!(
        by_filter.len() == 1 && by_filter[0].labels["session"] == "tricky",
        "selecting by filter: {by_filter:?}"
    );
    prometheus.wait_for(ns, "capstats_sessions", "2 sessions", |v| Ok(v == "2"))?;
    prometheus.wait_for(
        ns,
        "up{job=\"capstats\"}",
        "the target up",
        |v| Ok(v == "1"),
    )?;
    // Prometheus found nothing wrong with any scrape.
    let targets = ns.run(|| http_get(prometheus.addr, "/api/v1/targets", HTTP_TIMEOUT))?;
    let targets: serde_json::Value = serde_json::from_str(&targets.body)?;
    let active = &targets["data"]["activeTargets"][0];
    ensure!(
        active["health"] == "up" && active["lastError"] == "",
        "target: {active}"
    );

    let stop = Instant::now();
    drop(prometheus);
    println!(
        "prometheus: ready {:.2} s after the test began, first scrape seen {:.2} s later, \
         {FRAMES} frames reported {:.2} s after they were sent, stopped in {:.2} s",
        ready.as_secs_f64(),
        first_scrape.as_secs_f64(),
        counted.as_secs_f64(),
        stop.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One sample of an exposition line.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses one sample line of the text format (0.0.4): `name{l="v",...} value`, with
/// `\\`, `\"` and `\n` escapes in label values; no timestamp is expected.
fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(['{', ' '])
        .with_context(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            let (start, c) = chars.next().with_context(|| format!("cut: {line:?}"))?;
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            let eq = after[start..]
                .find("=\"")
                .with_context(|| format!("bad label in {line:?}"))?;
            let key = &after[start..start + eq];
            ensure!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name {key:?} in {line:?}"
            );
            // Skip the rest of the key and `="`.
            for _ in 0..eq + 1 {
                chars.next();
            }
            let mut value = String::new();
            loop {
                match chars.next().with_context(|| format!("cut: {line:?}"))?.1 {
                    '"' => break,
                    '\\' => match chars.next().with_context(|| format!("cut: {line:?}"))?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => bail!("bad escape \\{other} in {line:?}"),
                    },
                    '\n' => bail!("raw line feed in {line:?}"),
                    c => value.push(c),
                }
            }
            ensure!(
                labels.insert(key.to_owned(), value).is_none(),
                "label {key} twice in {line:?}"
            );
            // `,` before the next label, or the closing `}`.
            let mut peek = chars.clone();
            if let Some((_, ',')) = peek.next() {
                chars.next();
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .with_context(|| format!("no space before the value in {line:?}"))?;
    ensure!(!value.contains(' '), "a timestamp or junk in {line:?}");
    let value: f64 = value
        .parse()
        .with_context(|| format!("bad value in {line:?}"))?;
    Ok((name.to_owned(), labels, value))
}

/// Checks a `/metrics` answer: 200, the text format's content type, every line a
/// comment or a well-formed sample, every one of `sessions` reported (and no other);
/// returns each session's packet count.
fn check_scrape(
    response: &capstats_tests::daemon::metrics::HttpResponse,
    sessions: &[String],
) -> anyhow::Result<BTreeMap<String, u64>> {
    ensure!(
        response.status == 200,
        "status {}: {}",
        response.status,
        response.body
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type:?}"
    );
    ensure!(
        response.body.ends_with('\n'),
        "the body does not end with a line feed: {:?}",
        response.body
    );
    let mut packets = BTreeMap::new();
    let mut reported = None;
    for line in response.body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name, labels, value) = parse_sample(line)?;
        match name.as_str() {
            "capstats_session_packets_total" => {
                let session = labels.get("session").context("no session label")?;
                ensure!(value >= 0.0 && value.fract() == 0.0, "{line:?}");
                packets.insert(session.clone(), value as u64);
            }
            "capstats_sessions" => reported = Some(value),
            _ => {}
        }
    }
    let names: Vec<&String> = packets.keys().collect();
    ensure!(
        names == sessions.iter().collect::<Vec<_>>(),
        "sessions {names:?}, expected {sessions:?}"
    );
    ensure!(
        reported == Some(sessions.len() as f64),
        "capstats_sessions {reported:?}"
    );
    Ok(packets)
}

/// What one scraper thread saw.
#[derive(Debug, Default)]
struct ScraperReport {
    scrapes: u64,
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

/// 50 threads in B scrape `/metrics` in a loop for 10 s, each GET with a 5 s timeout,
/// while frames go through the veth and a client polls: every scrape is answered 200
/// with a well-formed exposition of every session, no counter goes back, the client
/// is served throughout, and the sessions count every frame.
#[test]
fn fifty_concurrent_scrapers_for_ten_seconds() -> anyhow::Result<()> {
    require_root(TEST);
    require_prometheus()?;
    const SCRAPERS: usize = 50;
    const RUN: Duration = Duration::from_secs(10);
    const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
    const SESSIONS: usize = 4;
    const FRAMES: u64 = 400;
    const FRAMES_PER_SECOND: u32 = 50;
    let setup = Setup::new("scrape")?;
    let (ns, client, addr) = (&setup.rig.ns_b, &setup.client, setup.metrics);
    let interface = setup.rig.interface().to_owned();
    let names: Vec<String> = (0..SESSIONS).map(|i| format!("s{i}")).collect();
    // All match the frames sent: each counts every one.
    let filters = ["udp", "udp and dst port 53", "ip and not tcp", "ip"];
    for (name, filter) in names.iter().zip(filters) {
        client.ok(&["new", name, "interface", &interface, "filter", filter])?;
    }

    // One exposition through promtool, Prometheus's own checker.
    let body = ns.run(|| http_get(addr, "/metrics", SCRAPE_TIMEOUT))?.body;
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool")?;
    std::io::Write::write_all(
        &mut promtool.stdin.take().context("stdin")?,
        body.as_bytes(),
    )?;
    let out = promtool.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let stop = AtomicBool::new(false);
    let frames_sent = AtomicU64::new(0);
    let frame = rig::udp_a_to_b(53, 60);
    let sender = setup.rig.sender_a()?;
    let begin = Instant::now();
    let (reports, polls) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let scrapers: Vec<_> = (0..SCRAPERS)
            .map(|_| {
                let (names, stop) = (&names, &stop);
                scope.spawn(move || -> anyhow::Result<ScraperReport> {
                    ns.enter_current_thread()?;
                    let mut report = ScraperReport::default();
                    let mut last: BTreeMap<String, u64> = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let outcome = http_get(addr, "/metrics", SCRAPE_TIMEOUT)
                            .and_then(|response| check_scrape(&response, names));
                        let latency = t.elapsed();
                        report.scrapes += 1;
                        report.latencies.push(latency);
                        match outcome {
                            Ok(packets) => {
                                for (name, &count) in &packets {
                                    let before = last.get(name).copied().unwrap_or(0);
                                    if count < before {
                                        report.failures.push(format!(
                                            "{name}: {count} packets after {before}"
                                        ));
                                    }
                                }
                                last = packets;
                            }
                            Err(e) => {
                                report.failures.push(format!("after {latency:?}: {e:#}"));
                            }
                        }
                    }
                    Ok(report)
                })
            })
            .collect();
        let frames = std::iter::repeat_n(frame.as_slice(), FRAMES as usize);
        let sending =
            scope.spawn(|| sender.send_paced_counting(frames, FRAMES_PER_SECOND, &frames_sent));
        // The daemon's clients meanwhile: a poll every 100 ms, each timed.
        let mut polls = Vec::new();
        let mut poll_error = None;
        while begin.elapsed() < RUN {
            let t = Instant::now();
            match client.poll() {
                Ok(sessions) if sessions.len() == SESSIONS => polls.push(t.elapsed()),
                Ok(sessions) => {
                    poll_error = Some(format!("poll returned {} sessions", sessions.len()));
                    break;
                }
                Err(e) => {
                    poll_error = Some(format!("poll failed after {:?}: {e:#}", t.elapsed()));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if begin.elapsed() < RUN {
            std::thread::sleep(RUN - begin.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        let reports = scrapers
            .into_iter()
            .map(joined)
            .collect::<anyhow::Result<Vec<_>>>()?;
        joined(sending)?;
        if let Some(e) = poll_error {
            bail!("the daemon's client was not served during the scrapes: {e}");
        }
        Ok((reports, polls))
    })?;
    let elapsed = begin.elapsed();

    let scrapes: u64 = reports.iter().map(|r| r.scrapes).sum();
    let mut latencies: Vec<Duration> = reports.iter().flat_map(|r| r.latencies.clone()).collect();
    latencies.sort();
    let pct = |p: f64| -> Duration {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    let poll_max = polls.iter().max().copied().unwrap_or_default();
    println!(
        "{SCRAPERS} scrapers for {:.1} s: {scrapes} scrapes ({:.0}/s), {} failed; latency \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} client polls meanwhile, max {:.1} ms; \
         {} frames sent",
        elapsed.as_secs_f64(),
        scrapes as f64 / elapsed.as_secs_f64(),
        failures.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
        polls.len(),
        poll_max.as_secs_f64() * 1e3,
        frames_sent.load(Ordering::SeqCst),
    );
    ensure!(
        failures.is_empty(),
        "{} of {scrapes} scrapes failed; the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        reports.iter().all(|r| r.scrapes > 0),
        "a scraper got no answer at all"
    );
    ensure!(!polls.is_empty(), "no client poll during the scrapes");

    // After: the daemon runs, every session counted every frame, and a scrape says so.
    let mut daemon = setup.daemon;
    ensure!(daemon.is_running(), "the daemon died: {}", daemon.log());
    for name in &names {
        let session = client.settle(
            name,
            FRAMES,
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?;
        assert_eq!(session.packets, Some(FRAMES), "{name}");
    }
    let response = ns.run(|| http_get(addr, "/metrics", SCRAPE_TIMEOUT))?;
    let packets = check_scrape(&response, &names)?;
    for name in &names {
        assert_eq!(packets[name], FRAMES, "{name}: {}", response.body);
    }
    client.ok(&["poll"])?;
    Ok(())
}

/// A real Prometheus scrapes a daemon with `--web-config` (TLS with a certificate
/// made here, basic authentication) configured as for any exporter (`scheme: https`,
/// `tls_config.ca_file`, `basic_auth`): the target is up and its counts arrive; a job
/// with a wrong password is down with 401, one over plain HTTP is down too.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() -> anyhow::Result<()> {
    require_root(TEST);
    require_prometheus()?;
    let setup = Setup::with_web_config("promtls", |scratch| {
        self_signed(scratch.path())?;
        let hash = bcrypt::hash("scrape me", 4)?;
        let file = scratch.join("web.yml");
        std::fs::write(
            &file,
            format!(
                "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n\
                 basic_auth_users:\n  prometheus: '{hash}'\n"
            ),
        )?;
        Ok(Some(file))
    })?;
    let (ns, client) = (&setup.rig.ns_b, &setup.client);
    client.ok(&["new", "counted", "interface", setup.rig.interface(), "udp"])?;
    let ca = setup.scratch.join("cert.pem");
    let tls = |password: &str| {
        format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n    \
             basic_auth:\n      username: prometheus\n      password: '{password}'\n",
            ca.display()
        )
    };
    let jobs = [
        job("capstats", setup.metrics, &tls("scrape me")),
        job("wrong-password", setup.metrics, &tls("guess")),
        job("plain", setup.metrics, ""),
    ];
    let dir = setup.scratch.join("prometheus");
    std::fs::create_dir(&dir)?;
    let prometheus = Prometheus::start_with_jobs(ns, &dir, &jobs, setup.spare)?;
    prometheus.wait_for(
        ns,
        "up{job=\"capstats\"}",
        "the target up",
        |v| Ok(v == "1"),
    )?;
    prometheus.wait_for(
        ns,
        "capstats_session_packets_total{job=\"capstats\",session=\"counted\"}",
        "the session's counter",
        |_| Ok(true),
    )?;
    for down in ["wrong-password", "plain"] {
        prometheus.wait_for(
            ns,
            &format!("up{{job=\"{down}\"}}"),
            "the target down",
            |v| Ok(v == "0"),
        )?;
        let none = prometheus.query(ns, &format!("capstats_sessions{{job=\"{down}\"}}"))?;
        ensure!(none.is_empty(), "{down} scraped something: {none:?}");
    }
    let targets = ns.run(|| http_get(prometheus.addr, "/api/v1/targets", HTTP_TIMEOUT))?;
    let targets: serde_json::Value = serde_json::from_str(&targets.body)?;
    let error_of = |job: &str| {
        targets["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["labels"]["job"] == job)
            .map(|t| t["lastError"].as_str().unwrap_or_default().to_owned())
    };
    let wrong = error_of("wrong-password").unwrap_or_default();
    ensure!(
        wrong.contains("401"),
        "the wrong password's error: {wrong:?}"
    );
    ensure!(
        error_of("capstats").as_deref() == Some(""),
        "the right job's error: {:?}",
        error_of("capstats")
    );
    println!(
        "prometheus over TLS with the password: up; with a wrong one: {wrong}; plain HTTP: {}",
        error_of("plain").unwrap_or_default()
    );
    Ok(())
}
