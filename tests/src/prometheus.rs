//! A real Prometheus server (Debian's `prometheus`, which `cargo xtask test`
//! installs) in a namespace, scraping the daemon's `/metrics`, and its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_testkit::launch::{Process, spawn_logged};

use crate::daemon::metrics::http_get;
use crate::netns::NetNs;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";
/// How long Prometheus may take to be ready, and then to report what was sent.
pub const PROMETHEUS_WAIT: Duration = Duration::from_secs(20);
/// One HTTP request to Prometheus.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Fails loudly, saying what to install, unless Debian's prometheus is installed.
pub fn require_prometheus() -> anyhow::Result<()> {
    for tool in [PROMETHEUS, PROMTOOL] {
        ensure!(
            Path::new(tool).is_file(),
            "{tool} is missing: install Debian's `prometheus` package \
             (`apt-get install --no-install-recommends prometheus`; cargo xtask test does)"
        );
    }
    Ok(())
}

/// A Prometheus server in a namespace, scraping one target every second; stopped
/// (SIGTERM, then SIGKILL) on drop, which prints its log (shown if the test fails).
pub struct Prometheus {
    process: Process,
    /// Where its HTTP API listens (in the namespace).
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Writes a config scraping `target`'s `/metrics` every second, starts
    /// Prometheus in `ns` with its storage in `dir` and its API on `listen`, and
    /// waits until it is ready.
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        target: SocketAddr,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_with_jobs(ns, dir, &[job("capstats", target, "")], listen)
    }

    /// [`Prometheus::start`] with scrape jobs of its own (see [`job`]).
    pub fn start_with_jobs(
        ns: &NetNs,
        dir: &Path,
        jobs: &[String],
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        require_prometheus()?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n{}",
                jobs.concat()
            ),
        )?;
        let storage = dir.join("tsdb");
        let mut command = ns.command_keeping_mounts(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={listen}"));
        // Started as the daemon is: its log in a file, stopped if the test dies.
        let mut prometheus = Self {
            process: spawn_logged(command, &dir.join("prometheus.log"))?,
            addr: listen,
        };
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            if let Some(status) = prometheus.process.try_wait()? {
                bail!(
                    "prometheus exited ({status}); its log:\n{}",
                    prometheus.log()
                );
            }
            if let Ok(response) = ns.run(|| http_get(listen, "/-/ready", HTTP_TIMEOUT))
                && response.status == 200
            {
                return Ok(prometheus);
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus was not ready within {PROMETHEUS_WAIT:?}; its log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// An instant query through the HTTP API (from inside `ns`): each series of the
    /// vector with its labels and value (as Prometheus writes it).
    pub fn query(&self, ns: &NetNs, expr: &str) -> anyhow::Result<Vec<Series>> {
        self.query_path(
            ns,
            expr,
            format!("/api/v1/query?query={}", percent_encode(expr)),
        )
    }

    /// [`Prometheus::query`] evaluated at `at`: queries asked at one instant see the
    /// same scrapes, so rates of two counters read together compare exactly (asked a
    /// moment apart, a scrape between them moves one window and not the other).
    pub fn query_at(
        &self,
        ns: &NetNs,
        expr: &str,
        at: std::time::SystemTime,
    ) -> anyhow::Result<Vec<Series>> {
        let seconds = at
            .duration_since(std::time::UNIX_EPOCH)
            .context("a time after 1970")?
            .as_secs_f64();
        let path = format!(
            "/api/v1/query?query={}&time={seconds:.3}",
            percent_encode(expr)
        );
        self.query_path(ns, expr, path)
    }

    fn query_path(&self, ns: &NetNs, expr: &str, path: String) -> anyhow::Result<Vec<Series>> {
        let response = ns.run(|| http_get(self.addr, &path, HTTP_TIMEOUT))?;
        ensure!(
            response.status == 200,
            "GET {path}: {}\n{}",
            response.status,
            response.body
        );
        let json: serde_json::Value = serde_json::from_str(&response.body)
            .with_context(|| format!("GET {path}: {}", response.body))?;
        ensure!(
            json["status"] == "success" && json["data"]["resultType"] == "vector",
            "query {expr}: {json}"
        );
        json["data"]["result"]
            .as_array()
            .with_context(|| format!("query {expr}: {json}"))?
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .with_context(|| format!("no labels in {series}"))?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = series["value"][1]
                    .as_str()
                    .with_context(|| format!("no value in {series}"))?
                    .to_owned();
                Ok(Series { labels, value })
            })
            .collect()
    }

    /// Queries `expr` until it returns one series whose value satisfies `done` (or
    /// [`PROMETHEUS_WAIT`] passes); returns that series and how long it took.
    pub fn wait_for(
        &self,
        ns: &NetNs,
        expr: &str,
        what: &str,
        done: impl Fn(&str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<(Series, Duration)> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < PROMETHEUS_WAIT {
            last = self.query(ns, expr)?;
            if let [series] = last.as_slice()
                && done(&series.value)?
            {
                return Ok((series.clone(), start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let targets = ns
            .run(|| http_get(self.addr, "/api/v1/targets", HTTP_TIMEOUT))
            .map(|r| r.body)
            .unwrap_or_else(|e| format!("{e:#}"));
        bail!(
            "prometheus did not report {what} for {expr} within {PROMETHEUS_WAIT:?}; \
             it last answered {last:?}; its targets: {targets}; its log:\n{}",
            self.log()
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if self.process.is_stopped() {
            return;
        }
        if let Err(e) = self.process.terminate() {
            eprintln!("warning: {e:#}");
        }
        eprintln!("log of prometheus:\n{}", self.log());
    }
}

/// A scrape job of Prometheus's configuration: `name` scrapes `target`'s `/metrics`
/// every second; `more` is more of the job's settings, each line indented by 4.
pub fn job(name: &str, target: SocketAddr, more: &str) -> String {
    format!(
        "  - job_name: {name}\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: ['{target}']\n{more}"
    )
}

/// One series of an instant vector.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: String,
}

/// `s` as a URL query value: everything but the unreserved characters escaped.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
