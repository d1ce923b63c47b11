//! Where transfers run: one single-threaded tokio runtime per core, each on its own
//! thread, a transfer going to the least busy one.
//!
//! Why not the caller's multi-threaded runtime: lock-step TFTP is a ping-pong of one
//! small datagram each way, and on a work-stealing runtime every wake-up of the
//! transfer also wakes an idle worker to look for work. On a 2-core host that worker
//! runs on the core the client needs, and lock-step throughput dropped by about a
//! fifth against a single-threaded runtime (atftp, blksize 1468, loopback). One
//! runtime per core keeps that ping-pong on one thread and still spreads many
//! transfers over every core.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug)]
pub(super) struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Transfers running on it.
    load: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `n` runtimes (at least one). Must not be called from inside one of them.
    pub(super) fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let rt = Builder::new_current_thread()
                .enable_all()
                .thread_name("tftp-transfer")
                .build()?;
            let handle = rt.handle().clone();
            let token = stop.clone();
            std::thread::Builder::new()
                .name(format!("tftp-transfer-{i}"))
                .spawn(move || {
                    // Drives the tasks spawned onto it until the server stops.
                    rt.block_on(token.cancelled());
                })?;
            workers.push(Worker {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers { workers, stop })
    }

    /// Runs `fut` on the least busy runtime, tracked by `tracker`.
    pub(super) fn spawn<F>(&self, tracker: &TaskTracker, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let load = w.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        w.handle.spawn(tracker.track_future(async move {
            fut.await;
            load.fetch_sub(1, Ordering::Relaxed);
        }));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The threads end their runtimes (and any task left on them) and exit.
        self.stop.cancel();
    }
}

/// How many transfer runtimes to start: one per core.
pub(super) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
