//! The XDP attacher: a program on an interface's XDP hook, natively where the driver
//! can run it and generically otherwise, through a pinned link, and swapped on that
//! link. An XDP program that capstats did not attach is never replaced.

use aya::programs::links::FdLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, XdpMode as XdpFlags};
use aya::sys::SyscallError;
use capstats_common::hook::{Hook, XdpMode};
use capstats_ebpf::errors::with_causes;
use capstats_ebpf::program::LoadedProgram;

use super::{failed, pin_link};
use crate::bpffs::HookPins;
use crate::session::SessionError;

/// Attaches `program` to `interface`'s XDP hook, natively where the driver can,
/// generically otherwise, pinning the link. An XDP program already on the interface
/// is left alone.
pub fn attach(
    interface: &str,
    program: &LoadedProgram,
    pins: &HookPins,
) -> Result<(FdLink, XdpMode), SessionError> {
    let hook = Hook::Xdp;
    let mut xdp = program.xdp()?;
    let mut tried = Vec::new();
    for (mode, flags) in [
        (XdpMode::Native, XdpFlags::Driver),
        (XdpMode::Generic, XdpFlags::Skb),
    ] {
        match xdp.attach(interface, flags) {
            Ok(id) => {
                let link = FdLink::try_from(xdp.take_link(id)?)
                    .map_err(|e| failed(interface, hook, with_causes(&e)))?;
                let link = pin_link(interface, hook, link, &pins.link(Some(mode)))?;
                return Ok((link, mode));
            }
            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                if matches!(io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) =>
            {
                return Err(failed(
                    interface,
                    hook,
                    "the interface already has an XDP program that capstats did not attach; \
                     it is left in place (remove it, or count with hook tc)",
                ));
            }
            Err(e) => {
                tried.push(format!("{}: {}", mode.as_str(), with_causes(&e)));
            }
        }
    }
    Err(failed(
        interface,
        hook,
        format!("cannot attach ({})", tried.join("; ")),
    ))
}

/// Puts `program` on `link`, atomically (`BPF_LINK_UPDATE`).
pub fn swap(
    interface: &str,
    link: FdLink,
    program: &LoadedProgram,
) -> Result<FdLink, SessionError> {
    let hook = Hook::Xdp;
    let link = XdpLink::try_from(link).map_err(|e| {
        failed(
            interface,
            hook,
            format!("the link is not an XDP link: {}", with_causes(&e)),
        )
    })?;
    let mut xdp = program.xdp()?;
    let id = xdp.attach_to_link(link)?;
    FdLink::try_from(xdp.take_link(id)?).map_err(|e| failed(interface, hook, with_causes(&e)))
}
