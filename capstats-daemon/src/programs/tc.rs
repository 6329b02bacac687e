//! The tc attacher: a program on an interface's tcx ingress or egress hook, through a
//! pinned link, and swapped on that link.

use aya::programs::ProgramError;
use aya::programs::links::FdLink;
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::sys::SyscallError;
use capstats_common::hook::Hook;
use capstats_ebpf::errors::with_causes;
use capstats_ebpf::program::LoadedProgram;

use super::{failed, pin_link};
use crate::bpffs::HookPins;
use crate::session::SessionError;

/// Attaches `program` to `hook` (tc ingress or egress) of `interface`, pinning the
/// link.
pub fn attach(
    interface: &str,
    hook: Hook,
    program: &LoadedProgram,
    pins: &HookPins,
) -> Result<FdLink, SessionError> {
    let attach_type = match hook {
        Hook::TcEgress => TcAttachType::Egress,
        _ => TcAttachType::Ingress,
    };
    let mut classifier = program.sched_classifier()?;
    let id = classifier
        .attach(interface, attach_type)
        .map_err(|e| attach_error(e, interface, hook))?;
    let link = FdLink::try_from(classifier.take_link(id)?)
        .map_err(|e| failed(interface, hook, with_causes(&e)))?;
    pin_link(interface, hook, link, &pins.link(None))
}

/// Puts `program` on `link`, atomically (`BPF_LINK_UPDATE`).
pub fn swap(
    interface: &str,
    hook: Hook,
    link: FdLink,
    program: &LoadedProgram,
) -> Result<FdLink, SessionError> {
    let link = SchedClassifierLink::try_from(link).map_err(|e| {
        failed(
            interface,
            hook,
            format!("the link is not a tcx link: {}", with_causes(&e)),
        )
    })?;
    let mut classifier = program.sched_classifier()?;
    let id = classifier.attach_to_link(link)?;
    FdLink::try_from(classifier.take_link(id)?)
        .map_err(|e| failed(interface, hook, with_causes(&e)))
}

/// The kernel's reason, in words.
fn attach_error(error: ProgramError, interface: &str, hook: Hook) -> SessionError {
    if let ProgramError::SyscallError(SyscallError { io_error, .. }) = &error
        && io_error.raw_os_error() == Some(libc::ERANGE)
    {
        return failed(
            interface,
            hook,
            "the tcx hook already runs as many programs as the kernel allows (63); capstats \
             needs one: detach another program there",
        );
    }
    failed(
        interface,
        hook,
        format!("cannot attach: {}", with_causes(&error)),
    )
}
