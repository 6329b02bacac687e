//! One request line, as the daemon reads it: the 64 KiB limit, UTF-8, `Request::parse`
//! and `Command::check`. Never a panic; accepted requests round-trip; refusals are one
//! printable line (see `capstats_fuzz::request_line`).
#![no_main]

libfuzzer_sys::fuzz_target!(|line: &[u8]| {
    let _ = capstats_fuzz::raw_line(line);
});
