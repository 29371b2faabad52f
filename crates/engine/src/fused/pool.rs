//! The threads of the fused decode step: libtorch's own OpenMP team, driven directly.
//!
//! A decode step hands out about 33 matrix-vector products of a few hundred microseconds
//! each, so the latency of a hand-off matters. libtorch's OpenMP workers spin for a few
//! milliseconds after each parallel region before they sleep; a pool of our own would share
//! the cores with those spinning workers (measured: the first fused step after the prompt
//! took 9.3 ms instead of 6.0 with a separate pool). Running our parts as OpenMP regions
//! (`GOMP_parallel`, looked up in the process, where libtorch loaded it) uses the very
//! threads that spin, and a hand-off costs about a microsecond. Where no such runtime is
//! loaded, the parts run one after the other on the calling thread: the same numbers,
//! slower.

use std::ffi::{c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::dl;
use crate::error::{Error, Result};

/// `GOMP_parallel(fn, data, num_threads, flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
/// `omp_get_thread_num()` / `omp_get_num_threads()`.
type OmpQuery = unsafe extern "C" fn() -> c_int;

/// The entry points of the OpenMP runtime libtorch loaded.
#[derive(Clone, Copy)]
struct OpenMp {
    parallel: GompParallel,
    thread_num: OmpQuery,
    num_threads: OmpQuery,
}

/// The process's OpenMP runtime, looked up once.
fn open_mp() -> Option<OpenMp> {
    static RUNTIME: OnceLock<Option<OpenMp>> = OnceLock::new();
    *RUNTIME.get_or_init(|| {
        // SAFETY: the three symbols, where present, are the OpenMP ABI's functions of these
        // signatures (libgomp's, or the compatible ones LLVM's and Intel's runtimes export).
        unsafe {
            Some(OpenMp {
                parallel: symbol(c"GOMP_parallel")?,
                thread_num: symbol(c"omp_get_thread_num")?,
                num_threads: symbol(c"omp_get_num_threads")?,
            })
        }
    })
}

/// The function `name` loaded anywhere in the process, as an `F`.
///
/// # Safety
/// `F` must be a function-pointer type matching the symbol's definition.
unsafe fn symbol<F: Copy>(name: &CStr) -> Option<F> {
    // SAFETY: RTLD_DEFAULT searches every loaded object; the type is the caller's promise.
    unsafe { dl::symbol(libc::RTLD_DEFAULT, name) }
}

/// Runs jobs split into a fixed number of parts over the OpenMP team (see the module docs).
pub(crate) struct Pool {
    parts: usize,
    runtime: Option<OpenMp>,
}

/// One call's job, handed to every thread of the team.
struct Call<'a> {
    job: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    runtime: OpenMp,
    panicked: AtomicBool,
}

impl Pool {
    /// A pool splitting each job into `threads` parts.
    pub(crate) fn new(threads: usize) -> Pool {
        Pool {
            parts: threads.max(1),
            runtime: open_mp(),
        }
    }

    /// How many parts each job is split into.
    pub(crate) fn parts(&self) -> usize {
        self.parts
    }

    /// Runs `job(part)` for every part and returns when all are done.
    pub(crate) fn run(&self, job: &(dyn Fn(usize) + Sync)) -> Result<()> {
        let Some(runtime) = self.runtime.filter(|_| self.parts > 1) else {
            for part in 0..self.parts {
                job(part);
            }
            return Ok(());
        };
        let call = Call {
            job,
            parts: self.parts,
            runtime,
            panicked: AtomicBool::new(false),
        };
        let threads = c_uint::try_from(self.parts).unwrap_or(c_uint::MAX);
        // SAFETY: `GOMP_parallel` runs `run_parts(data)` on every thread of a new team and
        // returns when all have returned, so `call` outlives every use of the pointer.
        unsafe {
            (runtime.parallel)(
                run_parts,
                (&call as *const Call<'_>).cast_mut().cast(),
                threads,
                0,
            );
        }
        if call.panicked.load(Ordering::Acquire) {
            return Err(Error::Input(
                "a part of the fused decode step panicked (a bug in scope)".into(),
            ));
        }
        Ok(())
    }
}

/// One OpenMP thread's share of a [`Call`]: parts `me, me + team, ...` (a team may have fewer
/// threads than asked for, and every part must run).
extern "C" fn run_parts(data: *mut c_void) {
    // SAFETY: `Pool::run` passes a `Call` that lives until `GOMP_parallel` returns.
    let call = unsafe { &*(data as *const Call<'_>) };
    // SAFETY: inside a parallel region, the runtime's queries of it.
    let (me, team) = unsafe { ((call.runtime.thread_num)(), (call.runtime.num_threads)()) };
    let (me, team) = (
        usize::try_from(me).unwrap_or(0),
        usize::try_from(team).unwrap_or(1).max(1),
    );
    // Unwinding across the C frames of the runtime would be undefined: catch it here.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        for part in (me..call.parts).step_by(team) {
            (call.job)(part);
        }
    }));
    if outcome.is_err() {
        call.panicked.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_part_runs_once_per_job() -> Result<()> {
        // libtorch's OpenMP runtime is loaded once a tensor op has run.
        let _ = tch::Tensor::from(1.0f32).f_add_scalar(1.0)?;
        for threads in [1, 2, 5] {
            let pool = Pool::new(threads);
            assert_eq!(pool.parts(), threads);
            let counts: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..200 {
                pool.run(&|part| {
                    counts[part].fetch_add(1, Ordering::Relaxed);
                })?;
            }
            for c in &counts {
                assert_eq!(c.load(Ordering::Relaxed), 200);
            }
        }
        Ok(())
    }

    #[test]
    fn the_runtime_is_found_where_libtorch_loaded_it() {
        let _ = tch::Tensor::from(1.0f32).f_add_scalar(1.0);
        assert!(open_mp().is_some(), "no GOMP_parallel in the process");
    }

    #[test]
    fn a_panicking_part_is_an_error_not_an_abort() -> Result<()> {
        let _ = tch::Tensor::from(1.0f32).f_add_scalar(1.0)?;
        let pool = Pool::new(2);
        let outcome = pool.run(&|part| {
            if part == 1 {
                panic!("a deliberate panic in part 1 (this test checks it is caught)");
            }
        });
        assert!(outcome.is_err());
        pool.run(&|_| {})?;
        Ok(())
    }
}
