//! What `contrib/` ships for monitoring, checked against the real thing.
//!
//! - `contrib/grafana/capstats.json`: every PromQL expression of the dashboard (panel
//!   targets, the templating's `label_values` queries, their `legendFormat`s) names
//!   only metrics and labels that a real daemon's `/metrics` serves (metrics by their
//!   `# TYPE` lines, labels by the samples of the metrics an expression names), apart
//!   from the target labels Prometheus adds (`instance`, `job`); each expression
//!   parses in `promtool` (Debian's `prometheus`, which `cargo xtask test` installs).
//!   The same check refuses a dashboard with a misspelt metric or label. And a real
//!   Prometheus scraping a daemon that counts frames evaluates every expression, with
//!   the variables set as Grafana sets them: each returns series with its legend's
//!   labels, and bits/s is 8 × the frame's bytes × packets/s.
//! - `contrib/node_exporter/`: the textfile script passes `sh -n` and `shellcheck`,
//!   writes what `capstats poll --prometheus` prints into a scratch directory as
//!   `capstats.prom` (0644, no temporary file left), and on failure leaves the last
//!   file as it was; its systemd service and timer pass `systemd-analyze verify`.
//!
//! The daemons run in namespace B of a rig, as in the other daemon tests.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use capstats_common::metrics::{DaemonInfo, render};
use capstats_common::protocol::Session;
use capstats_tests::daemon::metrics::{free_loopback_addrs, get, http_get};
use capstats_tests::daemon::rig::{self, Rig, Setup};
use capstats_tests::daemon::{Daemon, DaemonSpec, PinDir, binary};
use capstats_tests::prometheus::{
    HTTP_TIMEOUT, PROMTOOL, Prometheus, percent_encode, require_prometheus,
};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "contrib";
const SHELLCHECK: &str = "/usr/bin/shellcheck";

/// Labels Prometheus gives every series of a target when it scrapes it; they are in no
/// exposition.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// The PromQL functions the check accepts (called as `name(`).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp_min",
    "deriv",
    "delta",
    "floor",
    "idelta",
    "increase",
    "irate",
    "last_over_time",
    "max_over_time",
    "min_over_time",
    "rate",
    "resets",
    "round",
    "time",
    "timestamp",
    "vector",
];
/// Aggregation operators (`sum by (l) (...)`, `sum(...) by (l)`).
const AGGREGATIONS: &[&str] = &[
    "avg", "bottomk", "count", "group", "max", "min", "quantile", "stddev", "stdvar", "sum", "topk",
];
/// Keywords taking a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other words that are not metric names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "Inf", "NaN"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

fn dashboard_path() -> PathBuf {
    repo_root().join("contrib/grafana/capstats.json")
}

fn node_exporter_dir() -> PathBuf {
    repo_root().join("contrib/node_exporter")
}

// ---------------------------------------------------------------------------------
// An exposition: metric names by `# TYPE`, label names by the samples.

/// Each metric family of an exposition and the label names its samples carry.
#[derive(Debug, Default)]
struct Exposition {
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().context("# TYPE without a name")?;
                labels.entry(name.to_owned()).or_default();
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let end = line
                .find(['{', ' '])
                .with_context(|| format!("no value in {line:?}"))?;
            let name = &line[..end];
            let family = labels
                .get_mut(name)
                .with_context(|| format!("sample {name} before its # TYPE: {line:?}"))?;
            if line[end..].starts_with('{') {
                family.extend(sample_label_names(&line[end + 1..]).context(line.to_owned())?);
            }
        }
        Ok(Self { labels })
    }
}

/// The label names of `a="x",b="y"} 1` (label values with escapes).
fn sample_label_names(mut rest: &str) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            ensure!(after.starts_with(' '), "no value after the labels");
            return Ok(names);
        }
        let (name, after) = rest.split_once("=\"").context("a label without =\"")?;
        names.push(name.to_owned());
        let mut chars = after.char_indices();
        let close = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    chars.next();
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => bail!("an unterminated label value"),
            }
        };
        rest = &after[close + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

// ---------------------------------------------------------------------------------
// PromQL, as far as the check needs it: which metrics and labels an expression names.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str,
    Number,
    Op(String),
}

/// Splits an expression into tokens; ranges and subqueries (`[...]`) are dropped, and
/// a Grafana variable (`$x`, `${x}`) may only be inside a string or a range.
fn tokens(expr: &str) -> anyhow::Result<Vec<Token>> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => bail!("an unterminated string in {expr:?}"),
                    Some('\\') if c != '`' => i += 2,
                    Some(&q) if q == c => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            out.push(Token::Str);
        } else if c == '[' {
            let close = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .with_context(|| format!("an unterminated range in {expr:?}"))?;
            i += close + 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Number);
        } else if c == '$' {
            bail!("a Grafana variable outside a string or a range in {expr:?}");
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                out.push(Token::Op(two));
                i += 2;
            } else if "{}(),=+-*/%^<>".contains(c) {
                out.push(Token::Op(c.to_string()));
                i += 1;
            } else {
                bail!("unexpected {c:?} in {expr:?}");
            }
        }
    }
    Ok(out)
}

/// What one expression names.
#[derive(Debug, Default)]
struct Uses {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// The labels of the outermost aggregation's `by`, if the expression is one: all
    /// that is left of the series for a legend.
    grouping: Option<BTreeSet<String>>,
}

fn op(token: Option<&Token>, want: &str) -> bool {
    matches!(token, Some(Token::Op(o)) if o == want)
}

/// The metrics and labels a PromQL expression names.
fn promql_uses(expr: &str) -> anyhow::Result<Uses> {
    let tokens = tokens(expr)?;
    let mut uses = Uses::default();
    let outer_aggregation =
        matches!(tokens.first(), Some(Token::Ident(a)) if AGGREGATIONS.contains(&a.as_str()));
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Op(o) if o == "{" => {
                // name op "value", ...}
                i += 1;
                loop {
                    match tokens.get(i) {
                        Some(Token::Op(o)) if o == "}" => break,
                        Some(Token::Ident(label)) => {
                            let matcher = ["=", "!=", "=~", "!~"]
                                .iter()
                                .any(|m| op(tokens.get(i + 1), m));
                            ensure!(
                                matcher && tokens.get(i + 2) == Some(&Token::Str),
                                "label {label} without a matcher and a string in {expr:?}"
                            );
                            uses.labels.insert(label.clone());
                            i += 3;
                            if op(tokens.get(i), ",") {
                                i += 1;
                            }
                        }
                        other => bail!("{other:?} in a selector of {expr:?}"),
                    }
                }
            }
            Token::Op(o) if o == "(" => depth += 1,
            Token::Op(o) if o == ")" => depth = depth.saturating_sub(1),
            Token::Ident(word) if LABEL_LISTS.contains(&word.as_str()) => {
                if op(tokens.get(i + 1), "(") {
                    let mut list = BTreeSet::new();
                    i += 2;
                    loop {
                        match tokens.get(i) {
                            Some(Token::Op(o)) if o == ")" => break,
                            Some(Token::Op(o)) if o == "," => {}
                            Some(Token::Ident(label)) => {
                                list.insert(label.clone());
                            }
                            other => bail!("{other:?} in {word} (...) of {expr:?}"),
                        }
                        i += 1;
                    }
                    if word == "by" && depth == 0 && outer_aggregation {
                        uses.grouping
                            .get_or_insert_with(BTreeSet::new)
                            .extend(list.iter().cloned());
                    }
                    uses.labels.extend(list);
                } else {
                    ensure!(
                        word.starts_with("group_"),
                        "{word} without a label list in {expr:?}"
                    );
                }
            }
            Token::Ident(word) if op(tokens.get(i + 1), "(") => ensure!(
                FUNCTIONS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()),
                "unknown function {word} in {expr:?}"
            ),
            Token::Ident(word)
                if AGGREGATIONS.contains(&word.as_str())
                    && matches!(tokens.get(i + 1), Some(Token::Ident(w)) if w == "by" || w == "without") =>
                {}
            Token::Ident(word) if KEYWORDS.contains(&word.as_str()) => {}
            Token::Ident(metric) => {
                uses.metrics.insert(metric.clone());
            }
            Token::Str | Token::Number | Token::Op(_) => {}
        }
        i += 1;
    }
    if outer_aggregation && uses.grouping.is_none() {
        // `sum(...)` or `sum without (...)`: no label or every label but some is left.
        let without = tokens
            .iter()
            .any(|t| matches!(t, Token::Ident(w) if w == "without"));
        if !without {
            uses.grouping = Some(BTreeSet::new());
        }
    }
    Ok(uses)
}

/// The `{{label}}`s of a legend.
fn legend_labels(legend: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut labels = BTreeSet::new();
    let mut rest = legend;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("an unclosed {{{{ in legend {legend:?}"))?;
        labels.insert(rest[start + 2..start + end].trim().to_owned());
        rest = &rest[start + end + 2..];
    }
    Ok(labels)
}

// ---------------------------------------------------------------------------------
// The dashboard.

/// One PromQL expression of the dashboard, where it is, and its legend's labels.
#[derive(Debug)]
struct Query {
    place: String,
    /// For `promtool`: the PromQL as written (a `label_values` query's selector).
    expr: String,
    uses: Uses,
    legend: BTreeSet<String>,
    /// A variable's: the label whose values it offers.
    variable_label: Option<String>,
}

/// Every panel, those in collapsed rows included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

const DATASOURCE_UID: &str = "${datasource}";

/// The dashboard's structure (Grafana 10/11, a Prometheus datasource variable used
/// everywhere) and its queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> anyhow::Result<Vec<Query>> {
    let schema = dashboard["schemaVersion"]
        .as_u64()
        .context("schemaVersion")?;
    ensure!(
        (38..=41).contains(&schema),
        "schemaVersion {schema} is not one of Grafana 10 or 11 (38 to 41)"
    );
    let uses_datasource = |place: &str, value: &serde_json::Value| {
        ensure!(
            value["type"] == "prometheus" && value["uid"] == DATASOURCE_UID,
            "{place}: datasource {value} is not {{\"type\": \"prometheus\", \"uid\": \"{DATASOURCE_UID}\"}}"
        );
        Ok(())
    };
    let mut queries = Vec::new();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    let mut names = BTreeSet::new();
    for variable in variables {
        let name = variable["name"]
            .as_str()
            .context("a variable without a name")?;
        names.insert(name);
        let place = format!("variable {name}");
        match variable["type"].as_str() {
            Some("datasource") => ensure!(
                name == "datasource" && variable["query"] == "prometheus",
                "{place}: a datasource variable other than `datasource` of Prometheus"
            ),
            Some("query") => {
                uses_datasource(&place, &variable["datasource"])?;
                let query = variable["query"]
                    .as_str()
                    .or_else(|| variable["query"]["query"].as_str())
                    .context(format!("{place}: no query"))?;
                let definition = variable["definition"].as_str().unwrap_or(query);
                ensure!(
                    definition == query,
                    "{place}: definition {definition:?} is not the query {query:?}"
                );
                let inner = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .with_context(|| format!("{place}: {query:?} is not label_values(...)"))?;
                let (selector, label) = inner.rsplit_once(',').unwrap_or(("", inner));
                let mut uses = if selector.is_empty() {
                    Uses::default()
                } else {
                    promql_uses(selector).context(place.clone())?
                };
                let label = label.trim();
                ensure!(
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{place}: {label:?} is not a label name"
                );
                uses.labels.insert(label.to_owned());
                queries.push(Query {
                    place,
                    expr: selector.trim().to_owned(),
                    uses,
                    legend: BTreeSet::new(),
                    variable_label: Some(label.to_owned()),
                });
            }
            other => bail!("{place}: type {other:?} (the check knows datasource and query)"),
        }
    }
    ensure!(
        names.contains("datasource"),
        "no `datasource` variable: the dashboard must not name a datasource of one Grafana"
    );
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"]
            .as_u64()
            .context(format!("panel {title:?}: no id"))?;
        ensure!(ids.insert(id), "panel id {id} twice");
        ensure!(panel["gridPos"].is_object(), "panel {title:?}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        uses_datasource(&format!("panel {title:?}"), &panel["datasource"])?;
        let targets = panel["targets"]
            .as_array()
            .context(format!("panel {title:?}: no targets"))?;
        ensure!(!targets.is_empty(), "panel {title:?}: no targets");
        for target in targets {
            let place = format!("panel {title:?} target {}", target["refId"]);
            uses_datasource(&place, &target["datasource"])?;
            let expr = target["expr"]
                .as_str()
                .context(format!("{place}: no expr"))?;
            let legend = target["legendFormat"].as_str().unwrap_or("__auto");
            queries.push(Query {
                uses: promql_uses(expr).context(place.clone())?,
                legend: legend_labels(legend).context(place.clone())?,
                place,
                expr: expr.to_owned(),
                variable_label: None,
            });
        }
    }
    for name in ["instance", "interface", "session"] {
        ensure!(names.contains(name), "no `{name}` variable");
    }
    Ok(queries)
}

/// Every metric and label each query names is in `exposition`; the names of what is
/// not, where, otherwise.
fn check_against(queries: &[Query], exposition: &Exposition) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for query in queries {
        let place = &query.place;
        for metric in &query.uses.metrics {
            if !exposition.labels.contains_key(metric) {
                problems.push(format!("{place}: metric {metric} is not in the exposition"));
            }
        }
        // A label must be on every metric the expression names (or, with none named,
        // on some metric); Prometheus's target labels are on every series.
        let known: BTreeSet<&str> = if query.uses.metrics.is_empty() {
            exposition
                .labels
                .values()
                .flatten()
                .map(String::as_str)
                .collect()
        } else {
            let mut sets = query
                .uses
                .metrics
                .iter()
                .filter_map(|m| exposition.labels.get(m));
            let first: BTreeSet<&str> = sets
                .next()
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default();
            sets.fold(first, |acc, s| {
                acc.into_iter().filter(|l| s.contains(*l)).collect()
            })
        };
        let exists = |label: &str| TARGET_LABELS.contains(&label) || known.contains(label);
        for label in &query.uses.labels {
            if !exists(label) {
                problems.push(format!(
                    "{place}: label {label} is not on {:?} in the exposition",
                    query.uses.metrics
                ));
            }
        }
        for label in &query.legend {
            let kept = match &query.uses.grouping {
                Some(grouping) => grouping.contains(label),
                None => exists(label),
            };
            if !kept {
                problems.push(format!(
                    "{place}: legend label {{{{{label}}}}} is not on the series of {:?}",
                    query.expr
                ));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

fn load_dashboard() -> anyhow::Result<serde_json::Value> {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The expression with Grafana's variables replaced for `promtool`:
/// `$__rate_interval` and the like by a duration, others (in regex matchers) by `.*`.
fn without_variables(expr: &str) -> String {
    substitute(expr, |name| {
        if name.starts_with("__") { "1m" } else { ".*" }.to_owned()
    })
}

/// The expression with each Grafana variable (`$name`, `${name}`) replaced by
/// `value(name)`.
fn substitute(expr: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            (&braced[..end], &braced[(end + 1).min(braced.len())..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push_str(&value(name));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `promtool check rules` on the expressions as recording rules: Prometheus's own
/// parser, without a server. Its complaints, if any.
fn promtool_parses(exprs: &[String], dir: &Path) -> anyhow::Result<Result<(), String>> {
    ensure!(
        Path::new(PROMTOOL).is_file(),
        "{PROMTOOL} is missing: install Debian's `prometheus` package (cargo xtask test does)"
    );
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: capstats:dashboard_{i}\n        expr: {}\n",
            serde_json::to_string(expr)?
        ));
    }
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, &rules)?;
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .context("cannot run promtool")?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

fn a_session(name: &str) -> Session {
    Session {
        name: name.into(),
        interface: "eth0".into(),
        filter: "udp".into(),
        packets: Some(1),
        bytes: Some(60),
        up: true,
        hook: capstats_common::hook::HookName::Tc,
        direction: capstats_common::hook::Direction::In,
        mode: None,
        packets_counted: None,
        created: "2026-01-01T00:00:00Z".into(),
        modified: "2026-01-01T00:00:00Z".into(),
        counting_since: None,
        survives_daemon: Some(true),
        compiling: false,
        reason: None,
        link: None,
        read_at: None,
    }
}

/// The check has teeth: against the library's rendering of every family, the
/// dashboard passes, and each misspelling of a metric or label in it is named.
#[test]
fn the_dashboard_check_refuses_names_the_exposition_lacks() -> anyhow::Result<()> {
    let exposition = Exposition::parse(&render(
        &[a_session("web")],
        &DaemonInfo {
            version: "0".into(),
            request_errors: Some(0),
            scrape_errors: Some(0),
        },
    ))?;
    let text = std::fs::read_to_string(dashboard_path())?;
    check_against(
        &dashboard_queries(&serde_json::from_str(&text)?)?,
        &exposition,
    )?;

    for (right, wrong, named) in [
        (
            "capstats_session_packets_total{",
            "capstats_session_packet_total{",
            "metric capstats_session_packet_total",
        ),
        (
            "capstats_sessions{",
            "capstats_session{",
            "metric capstats_session ",
        ),
        ("interface=~", "iface=~", "label iface"),
        ("{{session}}", "{{sesion}}", "{{sesion}}"),
        ("by (instance)", "by (instanz)", "label instanz"),
        (", session)", ", sesion)", "label sesion"),
        (
            "capstats_build_info, instance",
            "capstats_build_info, session",
            "label session",
        ),
    ] {
        ensure!(
            text.contains(right),
            "the dashboard has no {right:?} to misspell"
        );
        let mutated: serde_json::Value = serde_json::from_str(&text.replace(right, wrong))?;
        let refused = dashboard_queries(&mutated).and_then(|q| check_against(&q, &exposition));
        match refused {
            Ok(()) => bail!("{right:?} as {wrong:?} passed the check"),
            Err(e) => ensure!(
                format!("{e:#}").contains(named),
                "{right:?} as {wrong:?}: the error does not name {named:?}: {e:#}"
            ),
        }
    }
    // A legend label aggregated away is refused too.
    let mutated = text.replacen(
        "\"legendFormat\": \"{{instance}}\"",
        "\"legendFormat\": \"{{session}}\"",
        2,
    );
    ensure!(mutated != text, "no {{{{instance}}}} legend to change");
    let refused = check_against(
        &dashboard_queries(&serde_json::from_str(&mutated)?)?,
        &exposition,
    );
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("{{session}}")),
        "sum by (instance) with legend {{{{session}}}}: {refused:?}"
    );
    Ok(())
}

/// Prometheus's parser accepts every expression of the dashboard (and refuses a
/// broken one, so that the check can fail).
#[test]
fn promtool_parses_every_dashboard_expression() -> anyhow::Result<()> {
    let queries = dashboard_queries(&load_dashboard()?)?;
    let exprs: Vec<String> = queries
        .iter()
        .filter(|q| !q.expr.is_empty())
        .map(|q| without_variables(&q.expr))
        .collect();
    ensure!(
        exprs.len() >= 10,
        "only {} expressions: {exprs:?}",
        exprs.len()
    );
    let scratch = ScratchDir::new("contrib-promtool")?;
    if let Err(complaint) = promtool_parses(&exprs, scratch.path())? {
        bail!("promtool check rules refused the dashboard's expressions: {complaint}");
    }
    let broken = vec!["rate(capstats_session_packets_total{session=\"a\"[1m])".to_owned()];
    ensure!(
        promtool_parses(&broken, scratch.path())?.is_err(),
        "promtool accepted {broken:?}"
    );
    Ok(())
}

/// Every metric and label the dashboard queries is in a real daemon's `/metrics`,
/// with sessions of every kind of hook in it.
#[test]
fn dashboard_queries_only_what_the_daemon_serves() -> anyhow::Result<()> {
    require_root(TEST);
    let queries = dashboard_queries(&load_dashboard()?)?;
    let rig = Rig::new("contrib-dash")?;
    let scratch = ScratchDir::new("contrib-dash")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let _pins: PinDir = spec.pin_guard();
    rig.ns_b.ip(&["link", "set", "lo", "up"])?;
    let [addr] = free_loopback_addrs(&rig.ns_b, 1)?[..] else {
        bail!("no free port");
    };
    let daemon = Daemon::start(
        &rig.ns_b,
        &spec.clone().serving_metrics(addr, None),
        &scratch.join("daemon.log"),
    )?;
    let client = capstats_tests::daemon::Client::new(&spec.socket)?;
    let interface = rig.interface().to_owned();
    client.ok(&[
        "new",
        "web",
        "interface",
        &interface,
        "hook",
        "tc",
        "filter",
        "tcp port 80",
    ])?;
    client.ok(&["new", "dns", "interface", &interface, "udp port 53"])?;
    let (status, body) = get(&rig.ns_b, addr, "/metrics")?;
    ensure!(status == 200, "GET /metrics: {status}\n{body}");
    let exposition = Exposition::parse(&body)?;
    // The exposition has what the dashboard's panels are about, so that the check
    // below is about them.
    for metric in [
        "capstats_session_packets_total",
        "capstats_session_bytes_total",
        "capstats_session_up",
        "capstats_session_survives_daemon",
        "capstats_scrape_errors_total",
        "capstats_request_errors_total",
    ] {
        ensure!(
            exposition.labels.contains_key(metric),
            "{metric} is not in /metrics:\n{body}"
        );
    }
    check_against(&queries, &exposition).map_err(|e| anyhow::anyhow!("{e}\n/metrics:\n{body}"))?;
    // Every metric the exposition has for sessions is on a panel.
    let shown: BTreeSet<&String> = queries.iter().flat_map(|q| &q.uses.metrics).collect();
    for metric in exposition.labels.keys() {
        ensure!(shown.contains(metric), "no panel shows {metric}");
    }
    drop(daemon);
    Ok(())
}

/// A real Prometheus scrapes a daemon counting frames on two sessions; with the
/// variables set as Grafana would, each variable offers the instance, the interface and
/// the sessions, each panel's expression returns series carrying its legend's labels
/// (an expression ending in `== 0`, which selects what is wrong, returns none, and
/// without the comparison some), and bits/s is 8 × bytes per packet × packets/s.
#[test]
fn dashboard_panels_show_the_traffic_in_prometheus() -> anyhow::Result<()> {
    require_root(TEST);
    require_prometheus()?;
    const FRAMES: u64 = 40;
    let queries = dashboard_queries(&load_dashboard()?)?;
    let rig = Rig::new("contrib-graf")?;
    let scratch = ScratchDir::new("contrib-graf")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let _pins: PinDir = spec.pin_guard();
    let ns = &rig.ns_b;
    ns.ip(&["link", "set", "lo", "up"])?;
    let [metrics, api] = free_loopback_addrs(ns, 2)?[..] else {
        bail!("no two free ports");
    };
    let daemon = Daemon::start(
        ns,
        &spec.clone().serving_metrics(metrics, None),
        &scratch.join("daemon.log"),
    )?;
    let client = capstats_tests::daemon::Client::new(&spec.socket)?;
    let interface = rig.interface().to_owned();
    client.ok(&[
        "new",
        "web",
        "interface",
        &interface,
        "hook",
        "tc",
        "filter",
        "udp",
    ])?;
    client.ok(&["new", "dns", "interface", &interface, "udp port 53"])?;
    let dir = scratch.join("prometheus");
    std::fs::create_dir(&dir)?;
    let prometheus = Prometheus::start(ns, &dir, metrics, api)?;
    // Scraped with both sessions at 0, then the frames.
    prometheus.wait_for(ns, "capstats_sessions", "2 sessions", |v| Ok(v == "2"))?;
    let frame = rig::udp_a_to_b(53, 100);
    rig.sender_a()?.send_n(&frame, FRAMES)?;
    for name in ["web", "dns"] {
        client.settle(
            name,
            FRAMES,
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?;
    }
    prometheus.wait_for(
        ns,
        &format!("capstats_session_packets_total{{session=\"web\"}} == {FRAMES}"),
        "the frames",
        |_| Ok(true),
    )?;
    // Grafana's values: the instance and interface chosen, both sessions.
    let instance = metrics.to_string();
    let value = |name: &str| match name {
        "instance" => instance.replace('.', "\\\\."),
        "interface" => interface.clone(),
        "session" => "(web|dns)".to_owned(),
        "__rate_interval" => "30s".to_owned(),
        other => panic!("no value for ${other}"),
    };
    // Every panel at one instant (the frames are in): a packets and a bytes rate then
    // cover the same scrapes, and their ratio is the frame's size exactly.
    let at = std::time::SystemTime::now();
    let mut rates = BTreeMap::new();
    for query in &queries {
        let place = &query.place;
        let expr = substitute(&query.expr, value);
        if let Some(label) = &query.variable_label {
            let path = format!(
                "/api/v1/label/{label}/values?match[]={}",
                percent_encode(if expr.is_empty() {
                    "{__name__=~\"capstats_.+\"}"
                } else {
                    &expr
                })
            );
            let response = ns.run(|| http_get(prometheus.addr, &path, HTTP_TIMEOUT))?;
            ensure!(
                response.status == 200,
                "{place}: GET {path}: {}",
                response.body
            );
            let json: serde_json::Value = serde_json::from_str(&response.body)?;
            let offered: BTreeSet<&str> = json["data"]
                .as_array()
                .context(response.body.clone())?
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect();
            let wanted: &[&str] = match label.as_str() {
                "instance" => &[instance.as_str()],
                "interface" => &[interface.as_str()],
                "session" => &["web", "dns"],
                other => bail!("{place}: a variable of {other}, which this test does not know"),
            };
            for want in wanted {
                ensure!(
                    offered.contains(want),
                    "{place}: {expr} offers {offered:?}, not {want}"
                );
            }
            continue;
        }
        let series = prometheus.query_at(ns, &expr, at)?;
        if let Some(unfiltered) = expr.strip_suffix("== 0") {
            ensure!(series.is_empty(), "{place}: {expr} returned {series:?}");
            let series = prometheus.query_at(ns, unfiltered, at)?;
            ensure!(
                series.len() == 2,
                "{place}: {unfiltered} returned {series:?}"
            );
            continue;
        }
        ensure!(!series.is_empty(), "{place}: {expr} returned nothing");
        for one in &series {
            for label in &query.legend {
                ensure!(
                    one.labels.get(label).is_some_and(|v| !v.is_empty()),
                    "{place}: legend label {label} is not on {one:?}"
                );
            }
        }
        if expr.contains("rate(capstats_session_") {
            for one in &series {
                let value: f64 = one.value.parse()?;
                ensure!(value > 0.0, "{place}: {expr} gave {one:?}");
                let session = one.labels.get("session").context("session")?;
                rates.insert((expr.contains("_bytes_"), session.clone()), value);
            }
        }
    }
    for session in ["web", "dns"] {
        let packets = rates
            .get(&(false, session.to_owned()))
            .context("no packets/s")?;
        let bits = rates
            .get(&(true, session.to_owned()))
            .context("no bits/s")?;
        let per_packet = bits / packets;
        ensure!(
            (per_packet - 8.0 * frame.len() as f64).abs() < 0.01 * per_packet,
            "{session}: {bits} bit/s over {packets} packets/s is not 8 × {} bytes",
            frame.len()
        );
    }
    drop(prometheus);
    drop(daemon);
    Ok(())
}

// ---------------------------------------------------------------------------------
// node_exporter's textfile collector.

fn script() -> PathBuf {
    node_exporter_dir().join("capstats-textfile.sh")
}

#[test]
fn textfile_script_passes_sh_n_and_shellcheck() -> anyhow::Result<()> {
    let out = Command::new("sh").arg("-n").arg(script()).output()?;
    ensure!(
        out.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        Path::new(SHELLCHECK).is_file(),
        "{SHELLCHECK} is missing: install Debian's `shellcheck` (cargo xtask test does)"
    );
    let out = Command::new(SHELLCHECK)
        .args(["--shell=sh", "--severity=style"])
        .arg(script())
        .output()?;
    ensure!(
        out.status.success(),
        "shellcheck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(script())?.permissions().mode();
    ensure!(mode & 0o111 != 0, "the script is not executable ({mode:o})");
    Ok(())
}

/// The service and the timer pass `systemd-analyze verify`, and the service runs the
/// script (where its install comment puts it) on the directory the script defaults to.
#[test]
fn textfile_units_verify() -> anyhow::Result<()> {
    let dir = node_exporter_dir();
    let service = std::fs::read_to_string(dir.join("capstats-textfile.service"))?;
    let timer = std::fs::read_to_string(dir.join("capstats-textfile.timer"))?;
    let script_text = std::fs::read_to_string(script())?;
    let exec: Vec<&str> = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("ExecStart=")?
        .split_whitespace()
        .collect();
    ensure!(
        service.contains(&format!("capstats-textfile.sh {}", exec[0])),
        "the service's install comment does not put the script at {}",
        exec[0]
    );
    let target = exec.get(1).context("ExecStart names no directory")?;
    ensure!(
        script_text.contains(&format!(":-{target}}}")),
        "the script's default directory is not {target}"
    );
    ensure!(
        service.contains(&format!("ReadWritePaths={target}\n")),
        "the service may not write {target}"
    );
    let scratch = ScratchDir::new("contrib-units")?;
    std::fs::write(
        scratch.join("capstats-textfile.service"),
        service.replace(
            &format!("ExecStart={}", exec[0]),
            &format!("ExecStart={}", script().display()),
        ),
    )?;
    std::fs::write(scratch.join("capstats-textfile.timer"), timer)?;
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(scratch.join("capstats-textfile.service"))
        .arg(scratch.join("capstats-textfile.timer"))
        .output()
        .context("systemd-analyze (apt-get install systemd)")?;
    let complaints = String::from_utf8_lossy(&verify.stderr);
    ensure!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    Ok(())
}

/// Runs the script with the test's `capstats` first on PATH and its daemon's socket.
fn run_script(
    socket: &Path,
    args: &[&Path],
    dir_env: Option<&Path>,
) -> anyhow::Result<std::process::Output> {
    let bin = binary()?;
    let bin_dir = bin.parent().context("binary dir")?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let mut command = Command::new("sh");
    command
        .arg(script())
        .args(args)
        .env("PATH", path)
        .env("CAPSTATS_SOCKET", socket)
        .env_remove("CAPSTATS_TEXTFILE_DIR");
    if let Some(dir) = dir_env {
        command.env("CAPSTATS_TEXTFILE_DIR", dir);
    }
    Ok(command.output()?)
}

fn entries(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    Ok(names)
}

/// Against a real daemon: the file holds what `poll --prometheus` prints, readable by
/// node_exporter, with nothing else left in the directory; without a daemon the script
/// fails and the last file stays.
#[test]
fn textfile_script_writes_the_exposition_atomically() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("contrib-textfile")?;
    let interface = setup.rig.interface().to_owned();
    setup
        .client
        .ok(&["new", "dns", "interface", &interface, "udp port 53"])?;
    let textfile = setup.scratch.join("textfile");
    std::fs::create_dir(&textfile)?;

    let out = run_script(&setup.spec.socket, &[&textfile], None)?;
    ensure!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        entries(&textfile)? == ["capstats.prom"],
        "{:?}",
        entries(&textfile)?
    );
    let prom = textfile.join("capstats.prom");
    let written = std::fs::read_to_string(&prom)?;
    let polled = setup.client.ok(&["poll", "--prometheus"])?;
    ensure!(
        written == polled,
        "capstats.prom:\n{written}\npoll --prometheus:\n{polled}"
    );
    ensure!(
        written.contains("capstats_session_packets_total{session=\"dns\"")
            && written.contains("\ncapstats_sessions 1\n"),
        "{written}"
    );
    let mode = std::fs::metadata(&prom)?.permissions().mode() & 0o777;
    ensure!(mode == 0o644, "capstats.prom has mode {mode:o}");

    // The directory from the environment, the file replaced.
    setup
        .client
        .ok(&["new", "web", "interface", &interface, "tcp port 80"])?;
    let out = run_script(&setup.spec.socket, &[], Some(&textfile))?;
    ensure!(
        out.status.success(),
        "with CAPSTATS_TEXTFILE_DIR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&prom)?;
    ensure!(written.contains("\ncapstats_sessions 2\n"), "{written}");
    ensure!(
        entries(&textfile)? == ["capstats.prom"],
        "{:?}",
        entries(&textfile)?
    );

    // No daemon: a failure, the last file as it was, no temporary file.
    let out = run_script(&setup.scratch.join("nosuch.sock"), &[&textfile], None)?;
    ensure!(
        !out.status.success(),
        "the script succeeded without a daemon"
    );
    ensure!(
        std::fs::read_to_string(&prom)? == written,
        "capstats.prom changed"
    );
    ensure!(
        entries(&textfile)? == ["capstats.prom"],
        "{:?}",
        entries(&textfile)?
    );
    // No directory: a failure.
    let out = run_script(&setup.spec.socket, &[&setup.scratch.join("nosuch")], None)?;
    ensure!(
        !out.status.success(),
        "the script succeeded without its directory"
    );
    Ok(())
}
