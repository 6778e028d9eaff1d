//! Writes the cache makes off a response's path (a ref after an answer is already in memory):
//! spawned, and counted, so a command that is about to exit (`warm`, `import`) can wait for
//! them all (`flush`) instead of losing the last ones with its runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Background {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: AtomicUsize,
    idle: Notify,
}

impl Background {
    /// Runs `work` on its own task.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let inner = self.inner.clone();
        inner.pending.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            work.await;
            if inner.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                inner.idle.notify_waiters();
            }
        });
    }

    /// Waits until every write spawned so far has ended.
    pub async fn flush(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_waits_for_every_spawned_write() {
        let b = Background::default();
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..20 {
            let d = done.clone();
            b.spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(5 * (i % 4))).await;
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        b.flush().await;
        assert_eq!(done.load(Ordering::SeqCst), 20);
        b.flush().await;
    }
}
