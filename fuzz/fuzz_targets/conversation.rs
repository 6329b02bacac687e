//! A byte stream through the daemon's connection loop (`capstats_daemon::converse`),
//! read through a buffer whose size the first byte chooses, so that lines straddle
//! reads differently: one response per line, each what the line alone gives, and only
//! accepted requests reach the stand-in session table (see `capstats_fuzz::conversation`).
#![no_main]

/// Buffer sizes: one byte at a time, small, the daemon's 8 KiB, larger than a line.
const CHUNKS: [usize; 8] = [1, 2, 7, 64, 4096, 8192, 65_536, 100_000];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&first, stream)) = data.split_first() {
        capstats_fuzz::conversation(stream, CHUNKS[usize::from(first) % CHUNKS.len()]);
    }
});
