//! Requests, responses and the session record, with their JSON form.

use serde::{Deserialize, Serialize};

/// One request line: a `version` and a command's fields. Unknown fields are refused,
/// so a typo is an error rather than an ignored option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            command,
        }
    }

    /// Parses one request line. The error says what is wrong, for the client to see.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("the request is not JSON: {e}"))?;
        let object = value
            .as_object_mut()
            .ok_or("the request must be a JSON object")?;
        let version = object
            .remove("version")
            .ok_or("the request has no \"version\"")?;
        let version = version
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("\"version\" must be a number, not {version}"))?;
        if version != crate::PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version} is not spoken here; this daemon speaks version {}",
                crate::PROTOCOL_VERSION
            ));
        }
        let command = serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;
        Ok(Self { version, command })
    }
}

/// What the client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Start counting `filter` on `interface` (the daemon's default interface if absent).
    New {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
        filter: String,
        /// Where to count; `socket` if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<HookName>,
        /// Which packets: `both` if absent (the socket hook counts both, XDP only `in`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direction: Option<Direction>,
    },
    /// Replace a session's filter, keeping its counters.
    Modify { name: String, filter: String },
    /// Stop counting and forget the session.
    Stop { name: String },
    /// Every session. (A struct variant, so that unknown fields are refused here too.)
    List {},
    /// One session with its counters.
    Show { name: String },
    /// Counters of the named sessions, or of every session when `names` is empty.
    Poll {
        #[serde(default)]
        names: Vec<String>,
    },
}

/// Where a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    /// An AF_PACKET socket filter: what tcpdump sees, both directions.
    Socket,
    /// TC clsact (tcx): ingress, egress or both; counts while no daemon runs.
    Tc,
    /// XDP: ingress, before the kernel builds a socket buffer; counts while no daemon
    /// runs.
    Xdp,
}

impl HookName {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookName::Socket => "socket",
            HookName::Tc => "tc",
            HookName::Xdp => "xdp",
        }
    }
}

/// Which packets a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
    Both,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        }
    }
}

/// One response line: exactly one of `ok` or `error`.
// One value per request, serialized at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ErrorReply),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// `new`, `modify`, `show`: the session as it now is.
    Session(Session),
    /// `stop`: the session's last state, counters included.
    Stopped(Session),
    /// `list`, `poll`: sessions in name order.
    Sessions(Vec<Session>),
}

/// A failure, with a kind a program can act on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, not a request, a wrong version, or too long.
    BadRequest,
    PermissionDenied,
    InvalidName,
    DuplicateName,
    UnknownSession,
    /// libpcap refused the expression; the message is libpcap's.
    InvalidFilter,
    UnknownInterface,
    /// The kernel refused something (program load, attach, map).
    Kernel,
    Internal,
}

/// A session as the daemon reports it. Times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub name: String,
    pub interface: String,
    pub filter: String,
    /// Packets and bytes counted since the session was created (bytes: each frame's
    /// length on the wire, link-layer header and VLAN tags included, as tcpdump
    /// records it). Absent only where a reply carries no counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Whether the interface is there and the session counts on it.
    pub up: bool,
    /// The hook counting: `socket`, `tc` or `xdp`.
    pub hook: String,
    /// `in`, `out` or `both`.
    pub direction: String,
    /// XDP sessions: `native` (in the driver) or `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub created: String,
    pub modified: String,
    /// Socket sessions: since when this daemon's socket counts. A socket session does
    /// not count while no daemon runs; when this is later than `created`, packets that
    /// passed in between (the daemon was restarted) are not in the counters. Absent for
    /// tc and xdp sessions, which count in the kernel without interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counting_since: Option<String>,
    /// When these counters were read (`poll`, `show`): rates divide by its differences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error(ErrorReply {
            kind,
            message: message.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_form() {
        let cases = [
            (
                Command::New {
                    name: "web".into(),
                    interface: Some("eth0".into()),
                    filter: "tcp port 80".into(),
                    hook: None,
                    direction: None,
                },
                r#"{"version":1,"command":"new","name":"web","interface":"eth0","filter":"tcp port 80"}"#,
            ),
            (
                Command::Poll { names: vec![] },
                r#"{"version":1,"command":"poll","names":[]}"#,
            ),
            (Command::List {}, r#"{"version":1,"command":"list"}"#),
        ];
        for (command, json) in cases {
            let request = Request {
                version: 1,
                command,
            };
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(Request::parse(json).unwrap(), request);
        }
    }

    #[test]
    fn unknown_commands_and_fields_are_refused() {
        for bad in [
            r#"{"version":1,"command":"reboot"}"#,
            r#"{"version":1,"command":"list","extra":1}"#,
            r#"{"version":1,"command":"show"}"#,
            r#"{"version":"1","command":"list"}"#,
            r#"{"command":"list"}"#,
            r#"[1,2]"#,
            r#"{"version":2,"command":"list"}"#,
            "{\"version\":1,",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
        let err = Request::parse(r#"{"version":1,"command":"list","extra":1}"#).unwrap_err();
        assert!(err.contains("unknown field `extra`"), "{err}");
        let err = Request::parse(r#"{"version":7,"command":"list"}"#).unwrap_err();
        assert!(err.contains("version 7"), "{err}");
    }

    #[test]
    fn responses_have_a_stable_json_form() {
        let error = Response::error(ErrorKind::UnknownSession, "no session named \"x\"");
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"error":{"kind":"unknown_session","message":"no session named \"x\""}}"#
        );
    }
}
