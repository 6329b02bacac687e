//! The libpcap functions the `pcap` crate does not offer: `pcap_compile` with a
//! netmask (`ip broadcast` needs one; the crate passes none), its compiled program
//! ([`Code`], freed with `pcap_freecode`), libpcap's interpreter
//! (`pcap_offline_filter`, behind `bpf_validate`), and an interface's netmask
//! (`pcap_lookupnet`).

use std::ffi::{CStr, CString, c_char, c_int, c_void};

use pcap::{Capture, State};

use crate::cbpf::RawInsn;

#[repr(C)]
struct BpfProgram {
    bf_len: u32,
    bf_insns: *mut RawInsn,
}

#[repr(C)]
struct PcapPkthdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

#[link(name = "pcap")]
unsafe extern "C" {
    fn pcap_compile(
        p: *mut c_void,
        fp: *mut BpfProgram,
        text: *const c_char,
        optimize: c_int,
        netmask: u32,
    ) -> c_int;
    fn pcap_freecode(fp: *mut BpfProgram);
    fn pcap_geterr(p: *mut c_void) -> *const c_char;
    fn bpf_validate(insns: *const RawInsn, len: c_int) -> c_int;
    fn pcap_offline_filter(fp: *const BpfProgram, h: *const PcapPkthdr, pkt: *const u8) -> c_int;
    fn pcap_lookupnet(
        device: *const c_char,
        net: *mut u32,
        mask: *mut u32,
        errbuf: *mut c_char,
    ) -> c_int;
}

/// libpcap's compiled program, freed with `pcap_freecode`.
pub struct Code(BpfProgram);

// SAFETY: the program is plain memory owned by this value (libpcap keeps no reference
// to it once pcap_compile returns), only read through `&self`.
unsafe impl Send for Code {}
// SAFETY: as for Send: shared references only read it.
unsafe impl Sync for Code {}

impl Drop for Code {
    fn drop(&mut self) {
        // SAFETY: the program is one pcap_compile filled in (or empty: null, which
        // pcap_freecode ignores), freed once, here.
        unsafe { pcap_freecode(&mut self.0) }
    }
}

impl Code {
    /// The instructions exactly as libpcap produced them.
    pub fn insns(&self) -> &[RawInsn] {
        if self.0.bf_insns.is_null() {
            return &[];
        }
        // SAFETY: pcap_compile allocated bf_len instructions at bf_insns, owned by
        // this value until it drops; RawInsn is libpcap's `struct bpf_insn` (repr C).
        unsafe { std::slice::from_raw_parts(self.0.bf_insns, self.0.bf_len as usize) }
    }
}

/// `pcap_compile` of `expression` on `capture`'s handle (its link type and
/// semantics), optimised, with `netmask`. Err: libpcap's own message.
pub fn compile<T: State + ?Sized>(
    capture: &Capture<T>,
    expression: &CStr,
    netmask: u32,
) -> Result<Code, String> {
    let handle = capture.as_ptr().cast::<c_void>();
    let mut code = Code(BpfProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    });
    // SAFETY: `handle` is the open pcap_t `capture` owns and borrows to us for the
    // call; `code.0` is writable, `expression` NUL-terminated. On failure libpcap
    // leaves the program empty, which Code's drop frees harmlessly.
    let rc = unsafe { pcap_compile(handle, &mut code.0, expression.as_ptr(), 1, netmask) };
    if rc != 0 {
        // SAFETY: pcap_geterr returns the handle's NUL-terminated error buffer, which
        // lives as long as the handle; it is copied out at once.
        let message = unsafe { CStr::from_ptr(pcap_geterr(handle)) };
        return Err(message.to_string_lossy().into_owned());
    }
    Ok(code)
}

/// libpcap's interpreter (`pcap_offline_filter`) running `program` on `packet`, its
/// captured length taken as its wire length: the program's return value (0: no
/// match). `None` when libpcap's own check (`bpf_validate`) refuses the program: its
/// interpreter checks no jump target or scratch index itself.
pub fn offline_filter(program: &[RawInsn], packet: &[u8]) -> Option<u32> {
    let len = c_int::try_from(program.len()).ok()?;
    let caplen = u32::try_from(packet.len()).ok()?;
    // SAFETY: bpf_validate reads `len` instructions at the slice's start.
    if unsafe { bpf_validate(program.as_ptr(), len) } == 0 {
        return None;
    }
    let code = BpfProgram {
        bf_len: len as u32,
        bf_insns: program.as_ptr().cast_mut(),
    };
    let header = PcapPkthdr {
        ts: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        caplen,
        len: caplen,
    };
    // SAFETY: the program is valid by bpf_validate (jumps and scratch indexes in
    // range, ends in a return), and pcap_offline_filter only reads it; the header
    // says `caplen` bytes, the packet slice's length, and loads beyond it are
    // checked against that. It returns bpf_filter's u_int.
    Some(unsafe { pcap_offline_filter(&code, &header, packet.as_ptr()) } as u32)
}

/// The IPv4 netmask of `interface` (`pcap_lookupnet`), `None` when it has none or
/// cannot be asked.
pub fn lookup_netmask(interface: &str) -> Option<u32> {
    let device = CString::new(interface).ok()?;
    let (mut net, mut mask) = (0u32, 0u32);
    // PCAP_ERRBUF_SIZE.
    let mut errbuf = [0 as c_char; 256];
    // SAFETY: `device` is NUL-terminated, `net` and `mask` writable u32s, and
    // `errbuf` PCAP_ERRBUF_SIZE bytes as libpcap requires; all alive across the call.
    let rc = unsafe { pcap_lookupnet(device.as_ptr(), &mut net, &mut mask, errbuf.as_mut_ptr()) };
    (rc == 0).then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead() -> Capture<pcap::Dead> {
        Capture::dead(pcap::Linktype::ETHERNET).unwrap()
    }

    #[test]
    fn compile_returns_libpcaps_program_or_its_message() {
        let code = compile(&dead(), c"udp", 0).unwrap();
        // An Ethernet `udp`: ends with `ret #262144` and `ret #0`.
        let insns = code.insns();
        assert!(insns.len() > 2, "{insns:?}");
        assert_eq!(insns.last().unwrap().code, 0x06);
        let message = compile(&dead(), c"udp and", 0).err().unwrap();
        assert!(message.contains("syntax error"), "{message}");
    }

    /// `ip broadcast` needs a netmask: without one libpcap refuses it.
    #[test]
    fn compile_passes_the_netmask() {
        let message = compile(&dead(), c"ip broadcast", 0xffff_ffff)
            .err()
            .unwrap();
        assert!(message.contains("netmask"), "{message}");
        compile(&dead(), c"ip broadcast", 0xffff_ff00).unwrap();
    }

    #[test]
    fn the_interpreter_runs_valid_programs_and_refuses_the_rest() {
        let accept = [RawInsn::new(0x06, 0, 0, 7)]; // ret #7
        assert_eq!(offline_filter(&accept, &[0; 14]), Some(7));
        let load = [
            RawInsn::new(0x30, 0, 0, 1), // ldb [1]
            RawInsn::new(0x16, 0, 0, 0), // ret a
        ];
        assert_eq!(offline_filter(&load, &[0, 9]), Some(9));
        // Out of the packet: no match.
        assert_eq!(offline_filter(&load, &[0]), Some(0));
        // A jump past the end, a scratch slot beyond 15, no final return.
        let jump = [RawInsn::new(0x05, 0, 0, 5), RawInsn::new(0x06, 0, 0, 1)];
        assert_eq!(offline_filter(&jump, &[0; 14]), None);
        let scratch = [RawInsn::new(0x60, 0, 0, 16), RawInsn::new(0x16, 0, 0, 0)];
        assert_eq!(offline_filter(&scratch, &[0; 14]), None);
        assert_eq!(
            offline_filter(&[RawInsn::new(0x30, 0, 0, 0)], &[0; 14]),
            None
        );
        assert_eq!(offline_filter(&[], &[0; 14]), None);
    }

    #[test]
    fn loopback_has_its_netmask_and_a_name_with_a_nul_has_none() {
        assert_eq!(lookup_netmask("lo"), Some(0xff00_0000u32.to_be()));
        assert_eq!(lookup_netmask("l\0o"), None);
        assert_eq!(lookup_netmask("capstats-no-such-if"), None);
    }
}
