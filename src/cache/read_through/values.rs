//! Named values of the read-through cache: fresh from memory, else one fetch for every
//! concurrent caller, persisted as refs, stale on upstream failure, negative answers remembered.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;

impl Cache {
    // ------------------------------------------------------------------ named values

    /// A named value: from memory while fresh; else fetched once for every concurrent caller
    /// (`fetch` gets the last known value, to revalidate against), remembered and persisted.
    /// While the upstream fails, the last known value is served stale and the upstream is left
    /// alone for `refresh_backoff`; with nothing to fall back on, the failure is the answer,
    /// remembered for `negative_ttl`. Answers that say "no such thing" are never replaced by a
    /// stale copy.
    pub async fn value<F, Fut>(
        &self,
        name: &RefName,
        freshness: Freshness,
        fetch: F,
    ) -> Result<Served<Bytes>>
    where
        F: FnOnce(Option<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(s) = self.values.get(name).await {
            let fresh = !s.unconfirmed && freshness.ttl.is_none_or(|ttl| s.at.elapsed() < ttl);
            if fresh {
                return Ok(Served::fresh_for(s.value, freshness.left(s.at)));
            }
            let backing_off = self
                .backoff
                .get(name)
                .is_some_and(|t| t.elapsed() < self.settings.refresh_backoff);
            if backing_off {
                crate::metrics::stale_served(freshness.kind);
                return Ok(Served::stale(s.value));
            }
        }
        let failure_key = format!("value\0{name}");
        if let Some(e) = self.failed(&failure_key) {
            return Err(e);
        }
        let (refs, values, backoff, failing, failures, background) = (
            self.refs.clone(),
            self.values.clone(),
            self.backoff.clone(),
            self.failing.clone(),
            self.failures.clone(),
            self.background.clone(),
        );
        let n = name.clone();
        // Boxed: the fetch path's state stays off the fresh path's future.
        let served = Box::pin(self.value_flight.run(name.clone(), async move {
                let known = match values.get(&n).await {
                    Some(s) => Some(s.value),
                    None => refs.get(&n).await.ok().flatten(),
                };
                if let (None, Some(v)) = (freshness.ttl, &known) {
                    values
                        .insert(
                            n.clone(),
                            Stamped::new(v.clone()),
                        )
                        .await;
                    return Ok(Served::fresh(v.clone()));
                }
                match fetch(known.clone()).await {
                    Ok(v) => {
                        let changed = known.as_ref() != Some(&v);
                        values.insert(n.clone(), Stamped::new(v.clone())).await;
                        backoff.invalidate(&n);
                        failing.invalidate(&n);
                        if changed {
                            // Persisted off the answer's path: this process has it in memory;
                            // a failed write costs a restart one upstream request.
                            let (refs, n, v) = (refs.clone(), n.clone(), v.clone());
                            background.spawn(async move {
                                if let Err(e) = refs.put(&n, v).await {
                                    tracing::warn!(r#ref = %n, error = %e, "not persisted; a restart will ask the upstream again");
                                }
                            });
                        }
                        Ok(Served::fresh_for(v, freshness.ttl))
                    }
                    Err(e) if e.is_upstream() && known.is_some() => {
                        tracing::warn!(r#ref = %n, kind = freshness.kind, error = %e, "refresh failed; serving the last known copy");
                        let known = known.expect("checked");
                        if values.get(&n).await.is_none() {
                            // Known from the ref store only: keep it in memory, unconfirmed,
                            // so the backoff below answers from memory.
                            let mut s = Stamped::new(known.clone());
                            s.unconfirmed = true;
                            values.insert(n.clone(), s).await;
                        }
                        let since = failing.get(&n).map_or_else(Instant::now, |(t, _)| t);
                        failing.insert(n.clone(), (since, e.message().to_string()));
                        backoff.insert(n, Instant::now());
                        Ok(Served::stale(known))
                    }
                    Err(e) => {
                        if freshness.remember_failures && negative(&e) {
                            failures.insert(failure_key, (e.clone(), Instant::now()));
                        }
                        Err(e)
                    }
                }
            }))
            .await?;
        if served.stale {
            crate::metrics::stale_served(freshness.kind);
        }
        Ok(served)
    }

    /// As `value`, decoded with `decode`; the decoded form is kept in memory beside the bytes,
    /// so a fresh answer costs no decoding.
    pub async fn value_as<T, F, Fut>(
        &self,
        name: &RefName,
        freshness: Freshness,
        decode: fn(&[u8]) -> Result<T>,
        fetch: F,
    ) -> Result<Served<Arc<T>>>
    where
        T: Send + Sync + 'static,
        F: FnOnce(Option<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(s) = self.values.get(name).await {
            if !s.unconfirmed && freshness.ttl.is_none_or(|ttl| s.at.elapsed() < ttl) {
                let left = freshness.left(s.at);
                if let Some(t) = s.decoded.and_then(|d| d.downcast::<T>().ok()) {
                    return Ok(Served::fresh_for(t, left));
                }
            }
        }
        let served = Box::pin(self.value(name, freshness, fetch)).await?;
        let t = Arc::new(decode(&served.value)?);
        if let Some(mut s) = self.values.get(name).await {
            if s.value == served.value {
                s.decoded = Some(t.clone());
                self.values.insert(name.clone(), s).await;
            }
        }
        Ok(served.map(|_| t))
    }

    /// Stores a named value now (for a fetch that learnt it on the side, such as a tag
    /// resolved by the GET that fetched its manifest).
    pub async fn put_value(&self, name: &RefName, value: Bytes) {
        self.values
            .insert(name.clone(), Stamped::new(value.clone()))
            .await;
        if let Err(e) = self.refs.put(name, value).await {
            tracing::warn!(r#ref = %name, error = %e, "not persisted; a restart will ask the upstream again");
        }
    }

    /// What is known of a named value without asking anyone: how long ago it was last
    /// confirmed (`None`: never by this process), and since when its refreshes fail, with the
    /// last error.
    pub async fn value_state(&self, name: &RefName) -> ValueState {
        let age = self
            .values
            .get(name)
            .await
            .filter(|s| !s.unconfirmed)
            .map(|s| s.at.elapsed());
        let failing = self
            .failing
            .get(name)
            .map(|(since, e)| (since.elapsed(), e));
        ValueState { age, failing }
    }

    /// A named value known to this process or an earlier one, however old, without fetching.
    pub async fn known_value(&self, name: &RefName) -> Option<Bytes> {
        if let Some(s) = self.values.get(name).await {
            return Some(s.value);
        }
        self.refs.get(name).await.ok().flatten()
    }
}
