//! libpcap's own oracle cases (`apply_cases.tsv`: TESTrun's `@filter_apply_blocks` on
//! Ethernet savefiles, and tcpdump's filter tests) through the real `capstats test`.
//!
//! Each libpcap row gives libpcap's expected return value per record (tcpdump's rows
//! give the matched totals of its expected output). Where the system's
//! libpcap (1.10.3) can compile the expression (`local_libpcap_agrees` = yes), capstats
//! must give the same verdict for every record and count the matched records' captured
//! bytes. Where it cannot (vxlan syntax is newer; `gateway` is not built in), the
//! column records libpcap's compile error, and capstats must fail with that message.
//! Each case runs with every hook's code (`--hook socket`, `tc`, `xdp`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    capstats_testkit::corpus::file("apply_cases.tsv").unwrap();
    capstats_testkit::corpus::dir().unwrap()
}

struct Case {
    file: String,
    expr: String,
    netmask: String,
    /// libpcap's verdict per record; `None` for tcpdump's cases, which give totals.
    results: Option<Vec<bool>>,
    matched_pkts: u64,
    matched_caplen_bytes: u64,
    agrees: String,
}

fn cases(corpus: &Path) -> Vec<Case> {
    let text =
        std::fs::read_to_string(corpus.join("apply_cases.tsv")).expect("read apply_cases.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("file\t") && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert!(f.len() >= 10, "malformed row: {line}");
            Case {
                file: f[0].to_owned(),
                expr: f[1].to_owned(),
                netmask: f[2].to_owned(),
                results: (!f[4].starts_with('('))
                    .then(|| f[4].split(',').map(|v| v.trim() != "0").collect()),
                matched_pkts: f[6].parse().expect("matched_pkts"),
                matched_caplen_bytes: f[7].parse().expect("matched_caplen_bytes"),
                agrees: f[9].to_owned(),
            }
        })
        .collect()
}

#[test]
fn every_libpcap_oracle_case_passes_through_capstats_test() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "capstats test loads eBPF programs: run as root"
    );
    let corpus = corpus();
    let cases = cases(&corpus);
    assert!(
        cases.len() >= 96,
        "expected at least the 96 libpcap cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    let (mut compared, mut compile_errors) = (0, 0);
    // Every hook's code: each reads the packet its own way.
    for (hook, case) in ["socket", "tc", "xdp"]
        .into_iter()
        .flat_map(|hook| cases.iter().map(move |case| (hook, case)))
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstats"));
        cmd.args(["test", "--json", "--per-record", "--hook", hook]);
        if !case.netmask.is_empty() {
            cmd.args(["--netmask", &case.netmask]);
        }
        cmd.arg(corpus.join(&case.file)).arg(&case.expr);
        let out = cmd.output().expect("run capstats");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let label = format!("{hook}: {} {:?}", case.file, case.expr);
        if case.agrees == "yes" {
            compared += 1;
            if !out.status.success() {
                failures.push(format!("{label}: failed: {stderr}"));
                continue;
            }
            let verdicts: Vec<bool> = stdout
                .lines()
                .filter_map(|l| l.strip_prefix("record "))
                .map(|l| l.ends_with(": 1"))
                .collect();
            if let Some(results) = &case.results
                && verdicts != *results
            {
                failures.push(format!(
                    "{label}: per-record {verdicts:?}, libpcap {results:?}"
                ));
            }
            let json: serde_json::Value = stdout
                .lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_else(|| panic!("{label}: no JSON summary in {stdout}"));
            let totals = (json["packets"].as_u64(), json["bytes"].as_u64());
            if totals != (Some(case.matched_pkts), Some(case.matched_caplen_bytes)) {
                failures.push(format!(
                    "{label}: packets/bytes {totals:?}, libpcap {}/{}",
                    case.matched_pkts, case.matched_caplen_bytes
                ));
            }
        } else {
            compile_errors += 1;
            let message = case
                .agrees
                .strip_prefix("compile-error: ")
                .and_then(|m| m.split(';').next())
                .unwrap_or_else(|| {
                    panic!("{label}: unexpected local_libpcap_agrees {:?}", case.agrees)
                });
            // With --json the error is one JSON object on stdout.
            let said = serde_json::from_str::<serde_json::Value>(stdout.trim())
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if out.status.code() != Some(1) || !said.contains(message) || !stderr.is_empty() {
                failures.push(format!(
                    "{label}: want exit 1 with libpcap's {message:?} as a JSON error, got {:?}: {stdout} {stderr}",
                    out.status.code()
                ));
            }
        }
    }
    eprintln!(
        "{compared} case runs compared record by record (3 hooks), {compile_errors} libpcap \
         compile errors reproduced"
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        compared >= 87,
        "at least the 87 cases libpcap 1.10.3 agrees on must be compared"
    );
}
