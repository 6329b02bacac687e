//! The client's system and C library calls, in one place; each `unsafe` block says
//! why it holds.

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// This process's effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Restores the default action of `SIGPIPE` (end the process), which Rust's runtime
/// sets to ignored: a client writing to a pipe that closed (`capstats poll | head`)
/// then ends quietly, as other command-line tools do.
pub fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: `signal` is unsafe for the handler it may install, which would run in
    // signal context; SIG_DFL is the kernel's default action, no code of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

unsafe extern "C" {
    /// libpcap's own version string ("libpcap version 1.10.5 (with TPACKET_V3)").
    fn pcap_lib_version() -> *const std::ffi::c_char;
}

/// The version string of the libpcap this process runs with.
pub fn libpcap_version() -> String {
    // SAFETY: pcap_lib_version takes nothing and returns a pointer to a static,
    // NUL-terminated string that libpcap never frees or changes.
    let text = unsafe { std::ffi::CStr::from_ptr(pcap_lib_version()) };
    text.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpcap_names_itself() {
        let version = libpcap_version();
        assert!(version.starts_with("libpcap version "), "{version}");
    }

    #[test]
    fn euid_is_what_proc_says() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let effective: u32 = uid.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(euid(), effective);
        assert_eq!(is_root(), effective == 0);
    }
}
