//! Single-flight: concurrent requests for one key share one execution of the work. The work runs
//! as its own task, so a caller that goes away does not cancel it for the others (and the cache
//! still fills). No lock is held across the work: the map lock only guards insert and remove.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::error::{Error, Result};

type SharedResult<V> = Shared<BoxFuture<'static, Result<V>>>;

pub struct Flight<K, V: Clone> {
    inflight: Mutex<HashMap<K, SharedResult<V>>>,
}

impl<K, V> Default for Flight<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Flight {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, V> Flight<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless a run for it is already in flight, in which case this call
    /// waits for that run and shares its result (or its error).
    pub async fn run<F>(&self, key: K, work: F) -> Result<V>
    where
        F: Future<Output = Result<V>> + Send + 'static,
    {
        let (shared, leader) = {
            let mut map = self.inflight.lock().expect("flight map poisoned");
            match map.get(&key) {
                Some(s) => (s.clone(), false),
                None => {
                    let task = tokio::spawn(work);
                    let s = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Error::internal(format!("fetch task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    map.insert(key.clone(), s.clone());
                    (s, true)
                }
            }
        };
        if !leader {
            crate::metrics::flight_join();
        }
        let out = shared.clone().await;
        let mut map = self.inflight.lock().expect("flight map poisoned");
        if map.get(&key).is_some_and(|s| s.ptr_eq(&shared)) {
            map.remove(&key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
        flight.run("k", async { Ok(8) }).await.unwrap();
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
