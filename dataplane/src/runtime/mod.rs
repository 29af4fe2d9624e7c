//! Per-core runtimes: one pinned OS thread per allowed CPU, each running a tokio
//! `current_thread` runtime with a `LocalSet`. Connection tasks are spawned with
//! `spawn_local`, so a panic inside one is caught by tokio at the task boundary and the core
//! keeps serving (`panic = "unwind"` in the release profile keeps that true in production).

pub mod backend;
pub mod uring;

use std::future::Future;
use std::thread::JoinHandle;

pub use backend::{select_backend, IoBackend};

/// Which CPUs the worker threads are pinned to, in thread order.
///
/// `allowed` is the affinity mask (sorted, deduplicated here); `workers == 0` means one worker
/// per allowed CPU. More workers than CPUs wrap around (oversubscription, useful in tests);
/// an empty mask yields `workers.max(1)` threads pinned to nothing (`None`).
pub fn plan_cores(allowed: &[usize], workers: usize) -> Vec<Option<usize>> {
    let mut cpus: Vec<usize> = allowed.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return vec![None; workers.max(1)];
    }
    let n = if workers == 0 { cpus.len() } else { workers };
    (0..n).map(|i| cpus.get(i % cpus.len()).copied()).collect()
}

/// Starts one pinned thread per entry of `plan`; each builds a `current_thread` runtime and a
/// `LocalSet` and runs `body(core_index)` to completion on it.
pub fn start_cores<F, Fut>(plan: &[Option<usize>], body: F) -> std::io::Result<Vec<JoinHandle<()>>>
where
    F: Fn(u16) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut handles = Vec::with_capacity(plan.len());
    for (i, cpu) in plan.iter().copied().enumerate() {
        let body = body.clone();
        let idx = u16::try_from(i).unwrap_or(u16::MAX);
        let h = std::thread::Builder::new()
            .name(format!("v2sp-core-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        tracing::warn!(core = i, cpu, "could not pin core thread");
                    }
                }
                run_local(body(idx));
            })?;
        handles.push(h);
    }
    Ok(handles)
}

/// Runs `fut` on a fresh `current_thread` runtime inside a `LocalSet` (used by core threads and
/// by tests that want the exact core environment on the current thread).
pub fn run_local<Fut: Future<Output = ()>>(fut: Fut) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot build core runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, fut);
}

/// Spawns a connection task on this core. A panic inside it ends only that task: it is caught
/// at the task's own poll and logged, so the core never unwinds. (One task per connection: a
/// watcher task awaiting the `JoinHandle` would cost every idle connection a second task.)
pub fn spawn_conn<Fut>(fut: Fut)
where
    Fut: Future<Output = ()> + 'static,
{
    tokio::task::spawn_local(CatchPanic(Some(Box::pin(fut))));
}

/// Polls the connection future under `catch_unwind`; after a panic it is dropped and never
/// polled again.
struct CatchPanic<F>(Option<std::pin::Pin<Box<F>>>);

impl<F: Future<Output = ()>> Future for CatchPanic<F> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(fut) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("connection task panicked; core continues");
                // Dropping the state may panic again; tokio catches that at the task boundary.
                self.0 = None;
                std::task::Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn plan_uses_all_allowed_by_default() {
        assert_eq!(plan_cores(&[3, 1, 1, 2], 0), vec![Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn plan_respects_worker_count_and_wraps() {
        assert_eq!(plan_cores(&[0, 1], 1), vec![Some(0)]);
        assert_eq!(plan_cores(&[0, 1], 3), vec![Some(0), Some(1), Some(0)]);
        assert_eq!(plan_cores(&[], 0), vec![None]);
        assert_eq!(plan_cores(&[], 2), vec![None, None]);
    }

    #[test]
    fn panic_in_connection_task_does_not_stop_core() {
        let ran = Rc::new(Cell::new(0u32));
        let r2 = ran.clone();
        run_local(async move {
            spawn_conn(async {
                #[allow(clippy::panic)]
                {
                    panic!("boom in a connection");
                }
            });
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let r3 = r2.clone();
            spawn_conn(async move { r3.set(r3.get() + 1) });
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            r2.set(r2.get() + 10);
        });
        assert_eq!(ran.get(), 11);
    }

    #[test]
    fn start_cores_runs_each_body() {
        let plan = plan_cores(&crate::sys::allowed_cpus(), 2);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let hs = start_cores(&plan, move |_i| {
            let c = c.clone();
            async move {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
