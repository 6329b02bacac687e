//! Hostile input from a seed, shaped like what reaches the daemon's socket: streams of
//! lines, each a valid request, a mutated one (bytes flipped, inserted, cut; values of
//! the wrong type; unknown or missing fields; unknown commands; other versions), random
//! bytes, invalid UTF-8, deep nesting, or a line at, just over or far over the 64 KiB
//! limit. The same seed gives the same case, so a failure is replayed from its seed.
//!
//! No dependency: a splitmix64 generator is all the randomness needed, and keeps the
//! cases the same across versions of any random-number crate.

use capstats_common::MAX_REQUEST_BYTES;
use capstats_common::protocol::{Command, Direction, HookName, MAX_NESTING, Packets, Request};
use serde_json::{Map, Value, json};

/// splitmix64 (Steele, Lea, Flood 2014): fast, and every seed gives a good stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// One generated case: the bytes a client sends, the reader's buffer size to read
/// them with, and the valid requests that went into them (which must round-trip).
#[derive(Debug, Clone)]
pub struct Case {
    pub stream: Vec<u8>,
    pub chunk: usize,
    pub valid: Vec<Command>,
}

/// A stream of one to six lines, the last one with or without its newline.
pub fn case(rng: &mut Rng) -> Case {
    let mut valid = Vec::new();
    let mut stream = Vec::new();
    let lines = 1 + rng.below(6);
    for i in 0..lines {
        if i > 0 {
            stream.push(b'\n');
        }
        stream.extend(line(rng, &mut valid));
    }
    if !rng.one_in(5) {
        stream.push(b'\n');
    }
    // The daemon's reader holds 8 KiB; smaller and larger buffers cut lines elsewhere.
    let chunk = *rng.pick(&[1, 2, 7, 64, 4096, 8192, 8192, 65_536, 100_000]);
    Case {
        stream,
        chunk,
        valid,
    }
}

/// One line (it may hold a `\n` of its own where a mutation put one).
pub fn line(rng: &mut Rng, valid: &mut Vec<Command>) -> Vec<u8> {
    match rng.below(100) {
        0..15 => {
            let command = command(rng);
            let line = serialized(&command);
            valid.push(command);
            line
        }
        15..35 => {
            let mut line = serialized(&command(rng));
            for _ in 0..1 + rng.below(3) {
                mutate_bytes(rng, &mut line);
            }
            line
        }
        35..60 => mutate_values(rng).into_bytes(),
        60..68 => {
            let len = rng.below(300);
            (0..len).map(|_| rng.byte()).collect()
        }
        68..75 => nested(rng),
        75..80 => {
            let line = serialized(&command(rng));
            line[..rng.below(line.len() + 1)].to_vec()
        }
        80..85 => {
            let mut line = serialized(&command(rng));
            let at = rng.below(line.len() + 1);
            let bad = rng.pick(INVALID_UTF8);
            line.splice(at..at, bad.iter().copied());
            line
        }
        85..90 => rng.pick(NOT_REQUESTS).as_bytes().to_vec(),
        90..98 => odd_json(rng).into_bytes(),
        _ => huge(rng, valid),
    }
}

/// A valid request line.
pub fn serialized(command: &Command) -> Vec<u8> {
    serde_json::to_vec(&Request::new(command.clone())).expect("a request serializes")
}

/// Any command with any field values (names, interfaces and filters from [`text`]):
/// valid JSON requests, whatever the daemon then thinks of their values.
pub fn command(rng: &mut Rng) -> Command {
    match rng.below(6) {
        0 => Command::New {
            name: text(rng),
            interface: rng.one_in(2).then(|| text(rng)),
            filter: text(rng),
            hook: rng
                .one_in(2)
                .then(|| *rng.pick(&[HookName::Socket, HookName::Tc, HookName::Xdp])),
            direction: rng
                .one_in(2)
                .then(|| *rng.pick(&[Direction::In, Direction::Out, Direction::Both])),
            packets: rng
                .one_in(2)
                .then(|| *rng.pick(&[Packets::Stack, Packets::Wire])),
        },
        1 => Command::Modify {
            name: text(rng),
            filter: text(rng),
        },
        2 => Command::Stop { name: text(rng) },
        3 => Command::List {},
        4 => Command::Show { name: text(rng) },
        _ => Command::Poll {
            names: (0..rng.below(4)).map(|_| text(rng)).collect(),
        },
    }
}

/// Strings a hostile client would try as names, interfaces and filters.
const TEXTS: &[&str] = &[
    "",
    "web",
    "eth0",
    "lo",
    "veth-b",
    "tcp port 80",
    "udp and not port 53",
    "host 10.0.0.1 or host 10.0.0.2",
    "a b",
    "a\tb",
    "a\nb",
    "a\r\nb",
    "$(reboot)",
    "`id`",
    "; rm -rf / #",
    "| nc attacker 1",
    "&& true",
    "'",
    "\"",
    "\\",
    "\\\"",
    "%s%n%x",
    "{}",
    "[]",
    "../../etc/passwd",
    "/",
    ".",
    "..",
    "lo:junk",
    "-d",
    "--help",
    "\0",
    "udp\0tcp",
    "\u{1b}[31mred\u{1b}[0m",
    "\u{1b}]0;title\u{7}",
    "\u{7f}",
    "\u{200b}",
    "\u{feff}",
    "\u{fffd}",
    "é",
    "名前",
    "🦀",
    "\u{10ffff}",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
];

/// A name, interface or filter: one of [`TEXTS`], random characters, pieces of both,
/// or a long run.
pub fn text(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..4 => (*rng.pick(TEXTS)).to_owned(),
        4..6 => (0..rng.below(40))
            .map(|_| (b' ' + rng.below(95) as u8) as char)
            .collect(),
        6 => (0..rng.below(20)).map(|_| any_char(rng)).collect(),
        7..9 => (0..1 + rng.below(4))
            .map(|_| *rng.pick(TEXTS))
            .collect::<Vec<_>>()
            .join(if rng.one_in(2) { " " } else { "" }),
        _ => {
            let len = *rng.pick(&[64, 65, 1_000, 10_000]);
            rng.pick(&["x", "é", "$", "\\", "\""]).repeat(len)
        }
    }
}

fn any_char(rng: &mut Rng) -> char {
    loop {
        let max = *rng.pick(&[0x80, 0x800, 0x1_0000, 0x11_0000]);
        if let Some(c) = char::from_u32(rng.below(max) as u32) {
            return c;
        }
    }
}

/// Byte sequences that are not UTF-8: a lone continuation byte, bytes that never
/// occur, an overlong encoding, a surrogate, a code point past U+10FFFF, a cut-off
/// sequence.
const INVALID_UTF8: &[&[u8]] = &[
    b"\x80",
    b"\xff",
    b"\xfe\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\xa6",
];

/// Lines that are JSON but no request, or hardly JSON at all.
const NOT_REQUESTS: &[&str] = &[
    "",
    " ",
    "\r",
    "null",
    "true",
    "1",
    "\"list\"",
    "[]",
    "{}",
    "[{\"version\":1,\"command\":\"list\"}]",
    "{\"version\":1}",
    "{\"command\":\"list\"}",
    "{\"version\":1,\"command\":\"list\"}{\"version\":1,\"command\":\"list\"}",
    "{\"version\":1,\"command\":\"list\"} trailing",
    "{\"version\":1,\"command\":\"list\",}",
    "{'version':1,'command':'list'}",
    "{version:1,command:list}",
    "{\"version\":1,\"command\":\"list\"",
    "\u{feff}{\"version\":1,\"command\":\"list\"}",
    "{\"version\":1,\"command\":\"show\",\"name\":\"\\ud800\"}",
    "{\"version\":1,\"command\":\"show\",\"name\":\"\\u0000\"}",
    "{\"version\":1,\"command\":\"show\",\"name\":\"\\x41\"}",
    "{\"version\":1,\"command\":\"list\",\"version\":2}",
    "{\"version\":2,\"command\":\"list\",\"version\":1}",
    "{\"version\":1,\"command\":\"list\",\"command\":\"stop\"}",
    "{\"version\":1,\"command\":\"poll\",\"names\":null}",
    "{\"version\":1,\"command\":\"poll\",\"names\":\"web\"}",
    "{\"version\":1,\"command\":\"new\",\"name\":\"x\",\"filter\":\"\",\"hook\":\"XDP\"}",
    "{\"version\":1,\"command\":\"new\",\"name\":\"x\",\"filter\":\"\",\"hook\":null}",
];

/// Versions that are not the number 1, written as JSON text.
const VERSIONS: &[&str] = &[
    "0",
    "2",
    "-1",
    "1.0",
    "1.5",
    "1e0",
    "01",
    "-0",
    "\"1\"",
    "null",
    "true",
    "[1]",
    "{\"v\":1}",
    "4294967297",
    "18446744073709551616",
    "1e400",
    "-1e400",
    "123456789012345678901234567890",
];

/// A valid request with its values changed: a field of the wrong type, an unknown
/// field, a missing one, another command name, another version.
fn mutate_values(rng: &mut Rng) -> String {
    let Value::Object(mut object) =
        serde_json::to_value(Request::new(command(rng))).expect("a request serializes")
    else {
        unreachable!("a request is an object")
    };
    let mut version = None;
    for _ in 0..1 + rng.below(3) {
        let keys: Vec<String> = object.keys().cloned().collect();
        match rng.below(6) {
            0 => {
                object.insert(text(rng), random_value(rng, 3));
            }
            1 if !keys.is_empty() => {
                object.remove(rng.pick(&keys));
            }
            2 if !keys.is_empty() => {
                let key = rng.pick(&keys).clone();
                object.insert(key, random_value(rng, 3));
            }
            3 => {
                let name = match rng.below(3) {
                    0 => Value::String(text(rng)),
                    1 => Value::String(
                        (*rng.pick(&[
                            "NEW",
                            "List",
                            " list",
                            "list ",
                            "reboot",
                            "exec",
                            "__proto__",
                        ]))
                        .to_owned(),
                    ),
                    _ => random_value(rng, 2),
                };
                object.insert("command".into(), name);
            }
            4 => version = Some(*rng.pick(VERSIONS)),
            _ if !keys.is_empty() => {
                // The same field under another spelling.
                let key = rng.pick(&keys).clone();
                if let Some(value) = object.remove(&key) {
                    object.insert(key.to_uppercase(), value);
                }
            }
            _ => {}
        }
    }
    let text = Value::Object(object).to_string();
    match version {
        // Raw JSON text: numbers serde_json would not produce (1e400, 01, -0).
        Some(raw) if text.contains("\"version\":1") => {
            text.replacen("\"version\":1", &format!("\"version\":{raw}"), 1)
        }
        _ => text,
    }
}

/// Any JSON value, nested at most `depth` levels.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => json!(rng.next_u64() as i64 >> rng.below(64)),
        3 => json!(rng.below(2_000_000) as f64 / 7.0 - 1e5),
        4 => Value::String(text(rng)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (text(rng), random_value(rng, depth - 1)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// Arrays and objects nested around the limit and far past it, alone, closed or not,
/// or as a field of a request.
fn nested(rng: &mut Rng) -> Vec<u8> {
    let depth = *rng.pick(&[
        2,
        50,
        MAX_NESTING - 1,
        MAX_NESTING,
        MAX_NESTING + 1,
        1_000,
        30_000,
        100_000,
    ]);
    // Past 10,000 levels only the simplest shape: the line is over the limit already.
    let (open, close) = if depth > 10_000 {
        ("[", "]")
    } else {
        *rng.pick(&[("[", "]"), ("{\"a\":", "}"), ("[{\"a\":", "}]")])
    };
    let mut value = open.repeat(depth);
    if rng.one_in(2) {
        value.push('1');
        value.push_str(&close.repeat(depth));
    }
    match rng.below(3) {
        0 => value.into_bytes(),
        1 => format!("{{\"version\":1,\"command\":\"list\",\"x\":{value}}}").into_bytes(),
        _ => format!("{{\"version\":{value},\"command\":\"list\"}}").into_bytes(),
    }
}

/// Requests in unusual but valid JSON spellings, and strings with escapes.
fn odd_json(rng: &mut Rng) -> String {
    let name = text(rng);
    let quoted = serde_json::to_string(&name).expect("a string serializes");
    match rng.below(5) {
        // Every character escaped.
        0 => {
            let escaped: String = name
                .encode_utf16()
                .map(|unit| format!("\\u{unit:04x}"))
                .collect();
            format!("{{\"version\":1,\"command\":\"show\",\"name\":\"{escaped}\"}}")
        }
        // White space everywhere JSON allows it.
        1 => format!(" {{ \"version\" :\t1 ,\r\"command\" : \"show\" , \"name\" : {quoted} }} "),
        // Fields in another order.
        2 => format!("{{\"name\":{quoted},\"command\":\"stop\",\"version\":1}}"),
        // A lone surrogate escape, which is no character.
        3 => format!(
            "{{\"version\":1,\"command\":\"show\",\"name\":\"a\\udc00{}}}",
            &quoted[1..]
        ),
        // Duplicate fields.
        _ => format!("{{\"version\":1,\"command\":\"show\",\"name\":{quoted},\"name\":{quoted}}}"),
    }
}

/// A line at the limit (a valid request of exactly 65,536 bytes, which must be
/// dispatched), one byte over, or a megabyte.
fn huge(rng: &mut Rng, valid: &mut Vec<Command>) -> Vec<u8> {
    let target = match rng.below(4) {
        0 | 1 => MAX_REQUEST_BYTES,
        2 => MAX_REQUEST_BYTES + 1,
        _ => 1 << 20,
    };
    if rng.one_in(4) {
        return vec![*rng.pick(b"x[{\"\xff"); target];
    }
    let empty = serialized(&Command::Modify {
        name: "web".into(),
        filter: String::new(),
    });
    let command = Command::Modify {
        name: "web".into(),
        filter: "x".repeat(target - empty.len()),
    };
    let line = serialized(&command);
    assert_eq!(line.len(), target);
    if target <= MAX_REQUEST_BYTES {
        valid.push(command);
    }
    line
}

/// What [`mutate_bytes`] inserts: JSON's punctuation, escapes and bytes that break it.
const INSERTED: &[&[u8]] = &[
    b"\0", b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\xff", b"\r", b"\n", b"\\u0000",
    b"\\ud800", b"1e999",
];

/// Flips, inserts, deletes or repeats bytes somewhere in `line`.
fn mutate_bytes(rng: &mut Rng, line: &mut Vec<u8>) {
    let at = rng.below(line.len() + 1);
    match rng.below(6) {
        0 if at < line.len() => line[at] ^= 1 << rng.below(8),
        1 if at < line.len() => line[at] = rng.byte(),
        2 => {
            let bytes = *rng.pick(INSERTED);
            line.splice(at..at, bytes.iter().copied());
        }
        3 => {
            let end = (at + rng.below(16)).min(line.len());
            line.drain(at..end);
        }
        4 => {
            let end = (at + rng.below(16)).min(line.len());
            let piece = line[at..end].to_vec();
            line.splice(at..at, piece);
        }
        _ => line.truncate(at),
    }
}
