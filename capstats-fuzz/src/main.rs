//! `capstats-fuzz`: generated hostile input against the request decoder and the
//! connection loop, for as long as asked, on stable Rust (`cargo xtask fuzz` runs it
//! in release mode). A failing case is printed with its seed and its input is written
//! to a file, for `cargo fuzz run TARGET FILE` or `--case SEED`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use capstats_fuzz::{Report, case, fuzz};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "capstats-fuzz")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 60.0, conflicts_with = "cases")]
    seconds: f64,
    /// How many cases to run instead.
    #[arg(long)]
    cases: Option<u64>,
    /// Where the cases' seeds start (default: from the clock; printed either way).
    #[arg(long, value_parser = number)]
    seed: Option<u64>,
    /// Run the one case of this seed (from a failure's message) and show its input.
    #[arg(long, value_parser = number, conflicts_with_all = ["seconds", "cases", "seed"])]
    case: Option<u64>,
    /// Where a failing case's input is written.
    #[arg(long, default_value = "target/fuzz-failures")]
    failures: PathBuf,
    /// Write seed inputs for the cargo-fuzz targets instead: DIR/request/ (one line
    /// each) and DIR/conversation/ (a buffer-size byte, then a stream), from the seed.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cases", "case"])]
    write_corpus: Option<PathBuf>,
}

/// How many seed inputs `--write-corpus` writes per target.
const CORPUS_CASES: u64 = 300;

/// Generated cases as libFuzzer seeds, so that its mutations start from requests
/// rather than from nothing.
fn write_corpus(dir: &std::path::Path, seed: u64) -> std::io::Result<()> {
    let (requests, conversations) = (dir.join("request"), dir.join("conversation"));
    std::fs::create_dir_all(&requests)?;
    std::fs::create_dir_all(&conversations)?;
    let mut seeds = capstats_fuzz::generate::Rng::new(seed);
    for i in 0..CORPUS_CASES {
        let case =
            capstats_fuzz::generate::case(&mut capstats_fuzz::generate::Rng::new(seeds.next_u64()));
        // Seeds stay small: libFuzzer's inputs are short unless -max_len says otherwise.
        if case.stream.len() > 4096 {
            continue;
        }
        let line = case
            .stream
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default();
        std::fs::write(requests.join(format!("seed-{i:04}")), line)?;
        let mut stream = vec![i as u8];
        stream.extend(&case.stream);
        std::fs::write(conversations.join(format!("seed-{i:04}")), stream)?;
    }
    Ok(())
}

/// A number in decimal or `0x` hexadecimal.
fn number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a number: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.case {
        let mut report = Report::default();
        let input = capstats_fuzz::generate::case(&mut capstats_fuzz::generate::Rng::new(seed));
        println!(
            "case {seed:#018x}: {} bytes read {} at a time:\n{}",
            input.stream.len(),
            input.chunk,
            String::from_utf8_lossy(&input.stream[..input.stream.len().min(4096)])
        );
        return match case(seed, &mut report) {
            Ok(()) => {
                print!("passes: {report}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    if let Some(dir) = &args.write_corpus {
        return match write_corpus(dir, seed) {
            Ok(()) => {
                println!(
                    "seed inputs from seed {seed:#x} in {}/request and {0}/conversation",
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot write seed inputs to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let limit = Duration::from_secs_f64(args.seconds.max(0.0));
    let start = Instant::now();
    let mut next_note = Duration::from_secs(10);
    println!(
        "fuzzing the request decoder and the connection loop from seed {seed:#x} for {}",
        match args.cases {
            Some(n) => format!("{n} cases"),
            None => format!("{:.0} s", limit.as_secs_f64()),
        }
    );
    let result = fuzz(seed, |report| {
        if start.elapsed() >= next_note {
            println!(
                "  {:>6.0} s: {} requests in {} cases",
                start.elapsed().as_secs_f64(),
                report.requests,
                report.cases
            );
            next_note += Duration::from_secs(10);
        }
        match args.cases {
            Some(n) => report.cases >= n,
            None => start.elapsed() >= limit,
        }
    });
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{failure}");
            let file = args.failures.join(format!("case-{:016x}", failure.seed));
            match std::fs::create_dir_all(&args.failures)
                .and_then(|()| std::fs::write(&file, &failure.input))
            {
                Ok(()) => eprintln!(
                    "its input is in {} (cargo fuzz run conversation {0})",
                    file.display()
                ),
                Err(e) => eprintln!("cannot write its input to {}: {e}", file.display()),
            }
            ExitCode::FAILURE
        }
    }
}
