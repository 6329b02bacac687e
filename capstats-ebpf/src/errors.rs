//! How capstats' errors carry their causes.
//!
//! The rule, for this crate and the daemon: an error's text is whole. It says what
//! failed and ends with its cause's text, and it does not also return that cause from
//! [`std::error::Error::source`]: these errors travel as one string (a reply to a
//! client, a log line, `capstats test`'s message), and a printer that walks the chain
//! (anyhow's `{:#}`) would otherwise say the cause twice. A cause that is itself a
//! chain (aya's errors keep the kernel's errno as their source) is written out with
//! [`with_causes`], so that nothing of it is lost either.

use std::error::Error;

/// `error` and each of its causes, once each, joined by ": ", as anyhow's `{:#}`
/// prints a chain.
pub fn with_causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn every_cause_once_in_order() {
        let error = Outer(Inner(std::io::Error::from_raw_os_error(libc::EPERM)));
        let text = with_causes(&error);
        assert_eq!(
            text,
            format!(
                "outer: inner: {}",
                std::io::Error::from_raw_os_error(libc::EPERM)
            )
        );
    }

    /// How many times `needle` appears in `text`.
    fn times(text: &str, needle: &str) -> usize {
        text.matches(needle).count()
    }

    /// Each error of this crate that wraps a cause, printed as the daemon sends it
    /// (`to_string`) and as a chain printer would (`with_causes`, anyhow's `{:#}`):
    /// the cause's text appears exactly once in both.
    #[test]
    fn errors_with_a_cause_say_it_once_however_printed() {
        let errno = std::io::Error::from_raw_os_error(libc::EPERM).to_string();
        let eperm = || std::io::Error::from_raw_os_error(libc::EPERM);
        let syscall = || aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        let cases: Vec<(Box<dyn Error>, &str)> = vec![
            (
                Box::new(crate::filter::FilterError::Open {
                    what: "capture file /nonexistent".into(),
                    cause: pcap::Error::PcapError("no such file".into()),
                }),
                "no such file",
            ),
            (
                Box::new(crate::replay::ReplayError::Setup {
                    step: "unshare",
                    cause: std::io::Error::from_raw_os_error(libc::EPERM),
                }),
                &errno,
            ),
            (
                Box::new(crate::replay::ReplayError::Send {
                    len: 60,
                    cause: std::io::Error::from_raw_os_error(libc::EPERM),
                }),
                &errno,
            ),
            // aya keeps the errno as the source of its error: written out, not lost.
            (
                Box::new(crate::replay::ReplayError::Attach(
                    aya::programs::ProgramError::SyscallError(syscall()),
                )),
                &errno,
            ),
            (
                Box::new(crate::counters::CounterError::Create {
                    name: "web".into(),
                    slots: 1,
                    cause: aya::maps::MapError::CreateError {
                        name: "web".into(),
                        io_error: eperm(),
                    },
                }),
                &errno,
            ),
            (
                Box::new(crate::counters::CounterError::Read {
                    name: "web".into(),
                    slot: 0,
                    cause: aya::maps::MapError::SyscallError(syscall()),
                }),
                &errno,
            ),
            (
                Box::new(crate::counters::CounterError::OpenPinned {
                    path: "/sys/fs/bpf/x".into(),
                    cause: aya::maps::MapError::SyscallError(syscall()),
                }),
                &errno,
            ),
            (
                Box::new(crate::counters::CounterError::Pin {
                    name: "web".into(),
                    path: "/sys/fs/bpf/x".into(),
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::counters::CounterError::Dup {
                    name: "web".into(),
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::program::LoadError::Syscall {
                    name: "p".into(),
                    cause: eperm(),
                    slots: 4,
                }),
                &errno,
            ),
            (
                Box::new(crate::program::LoadError::Verifier {
                    name: "p".into(),
                    cause: eperm(),
                    log: "0: (b7) r0 = 0".into(),
                }),
                &errno,
            ),
            (
                Box::new(crate::program::LoadError::Lookup {
                    name: "p".into(),
                    id: 7,
                    cause: aya::programs::ProgramError::SyscallError(syscall()),
                }),
                &errno,
            ),
            (
                Box::new(crate::chain::ChainError::Create {
                    name: "a".into(),
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::chain::ChainError::Set {
                    name: "a".into(),
                    index: 1,
                    program: "p".into(),
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::chain::ChainError::Clear {
                    name: "a".into(),
                    index: 1,
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::chain::ChainError::Pin {
                    name: "a".into(),
                    path: "/sys/fs/bpf/x".into(),
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::shared::maps::MapsError::Create {
                    what: "dispatch map",
                    name: "d".into(),
                    entries: 3,
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::shared::maps::MapsError::Fill {
                    what: "dispatch map",
                    name: "d".into(),
                    entries: 3,
                    cause: eperm(),
                }),
                &errno,
            ),
            (
                Box::new(crate::testrun::TestRunError::Run {
                    program: "p".into(),
                    len: 60,
                    cause: aya::programs::ProgramError::SyscallError(syscall()),
                }),
                &errno,
            ),
            (
                Box::new(crate::testrun::TestRunError::Read {
                    path: "a.pcap".into(),
                    record: 3,
                    cause: pcap::Error::PcapError("truncated dump file".into()),
                }),
                "truncated dump file",
            ),
            (
                Box::new(crate::testrun::TestRunError::Translate(
                    crate::translate::TranslateError::Unsupported {
                        pc: 2,
                        what: "the packet type",
                        hook: crate::translate::Hook::Xdp,
                    },
                )),
                "the packet type",
            ),
        ];
        for (error, cause) in cases {
            let sent = error.to_string();
            assert_eq!(times(&sent, cause), 1, "{sent}");
            let chained = with_causes(error.as_ref());
            assert_eq!(times(&chained, cause), 1, "{chained}");
        }
    }
}
