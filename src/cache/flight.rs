//! Single-flight: concurrent requests for one key share one execution of the work. The work runs
//! as its own task, so a caller that goes away does not cancel it for the others (and the cache
//! still fills). No lock is held across the work: the map lock only guards insert and remove.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::error::{Error, Result};

type SharedResult<V> = Shared<BoxFuture<'static, Result<V>>>;

struct Entry<V: Clone> {
    id: u64,
    shared: SharedResult<V>,
}

pub struct Flight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Entry<V>>>>,
    next_id: AtomicU64,
}

impl<K, V> Default for Flight<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Flight {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K, V> Flight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless a run for it is already in flight, in which case this call
    /// waits for that run and shares its result (or its error).
    pub async fn run<F>(&self, key: K, work: F) -> Result<V>
    where
        F: Future<Output = Result<V>> + Send + 'static,
    {
        self.start(key, work).1.await
    }

    /// The run in flight for `key`, if any (to wait for its end without starting one).
    pub fn running(&self, key: &K) -> Option<SharedResult<V>> {
        let map = self.inflight.lock().expect("flight map poisoned");
        map.get(key).map(|e| e.shared.clone())
    }

    /// Starts `work` for `key` (or joins the run in flight) without waiting: returns whether
    /// this call started it, and a future of the shared result. The run finishes, and leaves
    /// the map, whether or not anyone awaits it.
    pub fn start<F>(&self, key: K, work: F) -> (bool, SharedResult<V>)
    where
        F: Future<Output = Result<V>> + Send + 'static,
    {
        let mut map = self.inflight.lock().expect("flight map poisoned");
        if let Some(e) = map.get(&key) {
            crate::metrics::flight_join();
            return (false, e.shared.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (inflight, k) = (self.inflight.clone(), key.clone());
        let task = tokio::spawn(async move {
            let out = work.await;
            let mut map = inflight.lock().expect("flight map poisoned");
            if map.get(&k).is_some_and(|e| e.id == id) {
                map.remove(&k);
            }
            out
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(Error::internal(format!("fetch task failed: {e}"))))
        }
        .boxed()
        .shared();
        map.insert(
            key,
            Entry {
                id,
                shared: shared.clone(),
            },
        );
        (true, shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_calls_share_one_run() {
        let flight: Arc<Flight<&'static str, u32>> = Arc::new(Flight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let (f, r) = (flight.clone(), runs.clone());
            handles.push(tokio::spawn(async move {
                f.run("k", async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok(7)
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // a later call runs again: results are not cached here
        assert_eq!(flight.run("k", async { Ok(8) }).await.unwrap(), 8);
        assert!(flight.inflight.lock().unwrap().is_empty());
        // a run nobody waits for still finishes and leaves the map
        let (leader, _) = flight.start("z", async { Ok(1) });
        assert!(leader);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(flight.inflight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let flight: Arc<Flight<u8, u8>> = Arc::new(Flight::default());
        let a = flight.run(1, async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Err(Error::upstream_unavailable("down"))
        });
        let b = flight.run(1, async { Ok(1) });
        let (a, b) = tokio::join!(a, b);
        assert_eq!(a.unwrap_err().message(), "down");
        assert_eq!(b.unwrap_err().message(), "down");
    }
}
