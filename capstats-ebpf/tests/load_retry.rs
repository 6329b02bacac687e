//! A signal to the loading thread must not fail a load. The verifier stops with
//! `EAGAIN` whenever a signal is pending for the task that loads (a job-control stop,
//! a cgroup freeze, any handled signal); CI once failed a corpus test that way. The
//! loader verifies again, so the load succeeds and says how often it ran.

mod common;

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::{CounterSlot, Hook, translate_all};

/// A filter the verifier takes a while over (many branches, variable offsets).
const EXPRESSION: &str = "geneve and geneve";

/// Loads tried until one had two verifications stopped (timing can miss).
const ATTEMPTS: usize = 20;

static SIGNALS_HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_HANDLED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_signal_during_verification_does_not_fail_the_load() {
    common::require_root();
    install_handler(libc::SIGUSR1);

    let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, EXPRESSION, 0).unwrap();
    let map = CounterMap::create("retry", 1).unwrap();
    let slot = CounterSlot { map: 0, slot: 0 };
    let maps = MapBinding::counters([&map]);
    // Enough filters that verification outlasts the delay below by far.
    let mut filters = 16;
    let (insns, verify_time) = loop {
        let slots = vec![(filter.program(), slot); filters];
        let insns = translate_all(&slots, Hook::TcIngress).unwrap();
        let start = Instant::now();
        let quiet = LoadedProgram::load_with(Hook::TcIngress, "retry", &insns, &maps).unwrap();
        let took = start.elapsed();
        assert_eq!(quiet.verifier_runs(), 1, "no signal, one verification");
        if took >= Duration::from_millis(40) || filters >= 512 {
            break (insns, took);
        }
        filters *= 2;
    };
    assert!(
        verify_time >= Duration::from_millis(10),
        "{filters} filters verify in {verify_time:?}: too fast to hit with a signal"
    );

    // Signals land a third of the way into the first verification and into the second
    // (which starts 2 ms after the first was stopped): CI once saw two loads in a row
    // stopped. Timing can miss; the attempts go on until both signals stopped one.
    let mut runs_seen = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let loader_tid = AtomicI32::new(0);
        let handled_before = SIGNALS_HANDLED.load(Ordering::SeqCst);
        let result = std::thread::scope(|scope| {
            let loader = scope.spawn(|| {
                loader_tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
                LoadedProgram::load_with(Hook::TcIngress, "retry", &insns, &maps)
            });
            while loader_tid.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            let start = Instant::now();
            // The loader waits 2 ms after a stopped verification before the next.
            let first = verify_time / 3;
            for at in [first, first + Duration::from_millis(2) + first] {
                std::thread::sleep(at.saturating_sub(start.elapsed()));
                if loader.is_finished() {
                    break;
                }
                signal(loader_tid.load(Ordering::SeqCst), libc::SIGUSR1);
            }
            loader.join().unwrap()
        });
        let program = result.unwrap_or_else(|e| {
            panic!("attempt {attempt}: signals during verification failed the load: {e}")
        });
        assert!(
            SIGNALS_HANDLED.load(Ordering::SeqCst) > handled_before,
            "the loader handled no signal"
        );
        runs_seen.push(program.verifier_runs());
        if program.verifier_runs() >= 3 {
            break;
        }
    }
    assert!(
        runs_seen.last() >= Some(&3),
        "in {ATTEMPTS} attempts the signals never stopped two verifications of one load \
         ({filters} filters, {verify_time:?}; verifications per load: {runs_seen:?}): the \
         test did not test the retry"
    );
}

fn signal(tid: libc::pid_t, signal: libc::c_int) {
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    assert_eq!(rc, 0, "tgkill: {}", std::io::Error::last_os_error());
}

fn install_handler(signal: libc::c_int) {
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = count_signal as *const () as usize;
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    let rc = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "sigaction: {}", std::io::Error::last_os_error());
}
