//! The filters of sessions that wait for them (restored at start, or their interface
//! back) compiled outside the table's lock, and those sessions brought up as they
//! compile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use capstats_common::protocol::{ErrorKind, HookName};

use super::{Service, lock};
use crate::log::event;
use crate::preflight::CompileError;
use crate::session::Compiled;

/// How many filters are compiled at once when sessions wait for theirs (a helper
/// process each; the machine's other work and the clients keep the rest).
pub const COMPILERS: usize = 2;

/// A filter the compiler compiles for a session: its name and filter, and the index of
/// the interface it is compiled for.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) name: String,
    pub(super) filter: String,
    pub(super) ifindex: Option<u32>,
}

impl Service {
    /// Starts the thread that compiles, outside the lock, the filters of the sessions
    /// that wait for them (restored at start, or their interface back), at most
    /// [`COMPILERS`] at a time and each within [`crate::preflight::COMPILE_LIMIT`], and
    /// brings those sessions up as their filters compile.
    pub fn start_compiler(service: &Arc<Mutex<Service>>) -> std::io::Result<()> {
        let (wake, woken) = std::sync::mpsc::channel();
        lock(service).compiler = Some(wake);
        let service = Arc::clone(service);
        std::thread::Builder::new()
            .name("capstats-compile".into())
            .spawn(move || {
                loop {
                    bring_up(&service);
                    if woken.recv().is_err() {
                        return;
                    }
                    while woken.try_recv().is_ok() {}
                }
            })?;
        Ok(())
    }

    /// Wakes the compiler: sessions wait for their filters.
    pub(super) fn wake_compiler(&self) {
        if let Some(compiler) = &self.compiler {
            let _ = compiler.send(());
        }
    }

    /// Takes every session waiting for its filter that no compiler has yet: what to
    /// compile for it, by interface and hook.
    fn take_jobs(&mut self) -> BTreeMap<(String, HookName), Vec<Job>> {
        let mut jobs: BTreeMap<(String, HookName), Vec<Job>> = BTreeMap::new();
        for session in self.sessions.values_mut() {
            if session.take_to_compile() {
                jobs.entry((session.interface.clone(), session.hook))
                    .or_default()
                    .push(Job {
                        name: session.name.clone(),
                        filter: session.filter.clone(),
                        ifindex: crate::attach::ifindex(&session.interface),
                    });
            }
        }
        jobs
    }

    /// Gives the sessions of `interface` at `hook` what compiling their filters gave,
    /// and generates the programs there from every session that has one (at once, or,
    /// where a previous daemon's links still count them, once every filter there is
    /// compiled). A session changed meanwhile, or whose interface was replaced, is
    /// compiled again.
    fn attach_compiled(
        &mut self,
        interface: &str,
        hook: HookName,
        done: Vec<(Job, Result<Compiled, CompileError>)>,
    ) {
        let mut failed = Vec::new();
        let mut came_up = Vec::new();
        for (job, result) in done {
            let Some(session) = self.sessions.get_mut(&job.name) else {
                continue;
            };
            // Not waiting for this any more, or to be compiled again (its interface
            // was announced again meanwhile: it may not have been up).
            if !session.compiling_taken() {
                continue;
            }
            let now = crate::attach::ifindex(&session.interface);
            if session.interface != interface || session.filter != job.filter {
                session.compile_again();
                continue;
            }
            if now != job.ifindex {
                // Replaced (or gone) meanwhile: compiled for the one there now.
                match now {
                    Some(_) => session.compile_again(),
                    None => session.wait_for_interface(),
                }
                continue;
            }
            match result {
                Ok(compiled) if compiled.is_for(interface, hook, &job.filter) => {
                    session.compiled_as(Ok(compiled.program), job.ifindex);
                    came_up.push(format!("{:?}", job.name));
                }
                Ok(_) => session.compile_again(),
                Err(e) => {
                    // A filter that does not compile, or not in time, is not tried
                    // again for the same interface; one that failed for the interface's
                    // sake (not up yet, say) is, at its next announcement.
                    let tried = (e.kind() == ErrorKind::InvalidFilter)
                        .then_some(job.ifindex)
                        .flatten();
                    session.compiled_as(Err(e.to_string()), tried);
                    failed.push((job.name, e));
                }
            }
        }
        let key = (interface.to_owned(), hook);
        for (name, e) in &failed {
            if self.restoring.contains(&key) {
                event!("session {name:?} restored down: {e}");
            } else {
                event!("session {name:?} is down, its counters kept: {e}");
            }
        }
        if self.inherited.contains(&key) {
            if self.compiling_in(interface, hook) {
                return;
            }
            self.inherited.remove(&key);
        }
        if came_up.is_empty() && failed.is_empty() {
            return;
        }
        match self.sync(interface, hook) {
            Ok(()) => {
                if !self.compiling_in(interface, hook) && self.restoring.remove(&key) {
                    let counting = self.names(interface, hook, |s| s.counting_ifindex().is_some());
                    event!(
                        "restored the {} of {interface}: {}",
                        match hook {
                            HookName::Socket => "socket program",
                            HookName::Tc => "tc programs",
                            HookName::Xdp => "XDP program",
                        },
                        if counting.is_empty() {
                            "no session counts".into()
                        } else {
                            counting
                        }
                    );
                } else if !came_up.is_empty() {
                    event!(
                        "{} with its filter compiled, counting on {interface} ({}): {}",
                        crate::sessions(came_up.len()),
                        hook.as_str(),
                        came_up.join(", ")
                    );
                }
            }
            Err(e) => event!(
                "the {} sessions of {interface} cannot count there: {e}",
                hook.as_str()
            ),
        }
    }
}

/// Compiles, outside the lock, the filter of every session waiting for one, and
/// brings the sessions up as their filters compile: interface by interface and hook
/// by hook, in batches that double (2, 4, 8, ...), so that the first come up at once.
/// Where a previous daemon's links still count the sessions, all of them first.
fn bring_up(service: &Mutex<Service>) {
    loop {
        let jobs = lock(service).take_jobs();
        if jobs.is_empty() {
            return;
        }
        for ((interface, hook), jobs) in jobs {
            let mut jobs = jobs.into_iter();
            let mut batch = COMPILERS;
            loop {
                let inherited = lock(service).inherited.contains(&(interface.clone(), hook));
                let take = if inherited { usize::MAX } else { batch };
                let now: Vec<Job> = jobs.by_ref().take(take).collect();
                if now.is_empty() {
                    break;
                }
                let results = compile_all(&interface, hook, &now);
                lock(service).attach_compiled(
                    &interface,
                    hook,
                    now.into_iter().zip(results).collect(),
                );
                batch = batch.saturating_mul(2);
            }
        }
    }
}

/// Compiles each job's filter for `interface` at `hook`, [`COMPILERS`] at a time.
fn compile_all(
    interface: &str,
    hook: HookName,
    jobs: &[Job],
) -> Vec<Result<Compiled, CompileError>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<Compiled, CompileError>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..COMPILERS.min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(at) else {
                        return;
                    };
                    let result = match job.ifindex {
                        None => Err(CompileError::UnknownInterface {
                            interface: interface.to_owned(),
                        }),
                        Some(_) => crate::preflight::compile(
                            interface,
                            hook,
                            &job.filter,
                            &format!("session {:?}", job.name),
                            crate::preflight::COMPILE_LIMIT,
                        ),
                    };
                    *results[at].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(CompileError::CompilerStopped))
        })
        .collect()
}
