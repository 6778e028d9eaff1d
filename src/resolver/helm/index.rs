//! A helm upstream's index: revalidated after `index_ttl`, kept as the last good copy,
//! parsed once into compact entries within the memory budget.

use super::*;

impl HelmUpstream {
    pub(super) fn meta_name(&self) -> &RefName {
        &self.meta_name
    }

    pub(super) fn raw_name(&self) -> RefName {
        RefName::new(["index-raw", self.name()])
    }

    /// The index, revalidated once older than `index_ttl`; while the upstream fails, the last
    /// good index (marked stale).
    pub async fn index(self: &Arc<Self>) -> Result<Served<Arc<IndexContent>>> {
        let this = self.clone();
        let meta = self
            .cache
            .value_as(
                self.meta_name(),
                Freshness::for_(self.config.index_ttl, "index"),
                IndexMeta::decode,
                move |known| async move { this.refresh(known).await },
            )
            .await?;
        let this = self.clone();
        let m = meta.value.clone();
        let content = self
            .cache
            .derived(
                self.content_key(&m),
                None,
                |c: &IndexContent| c.heap,
                move || async move { this.load_content(&m).await },
            )
            .await?;
        Ok(meta.map(|_| content))
    }

    /// What the catalog page may show of the index without asking the upstream: the content
    /// known here (from memory, or parsed from the copy on disk) and how fresh it is.
    pub async fn peek_index(self: &Arc<Self>) -> IndexPeek {
        let state = self.cache.value_state(self.meta_name()).await;
        let meta = self
            .cache
            .known_value(self.meta_name())
            .await
            .and_then(|b| IndexMeta::decode(&b).ok());
        let content = match meta {
            Some(m) => {
                let this = self.clone();
                let key = self.content_key(&m);
                self.cache
                    .derived(
                        key,
                        None,
                        |c: &IndexContent| c.heap,
                        move || async move { this.load_content(&m).await },
                    )
                    .await
                    .ok()
            }
            None => None,
        };
        IndexPeek { content, state }
    }

    /// A chart archive this cache holds (verified when it was stored), without fetching.
    pub async fn cached_archive(&self, at: &Located) -> Option<Bytes> {
        let d = at.digest.as_ref()?;
        self.cache.cached_bytes(d).await.ok().flatten()
    }

    /// Where the parsed content of one index version lives among the derived values.
    pub(super) fn content_key(&self, meta: &IndexMeta) -> String {
        let mut key = String::with_capacity(self.content_prefix.len() + meta.digest.len());
        key.push_str(&self.content_prefix);
        key.push_str(&meta.digest);
        key
    }

    pub(super) fn index_url(&self) -> Result<Url> {
        self.config
            .url
            .join("index.yaml")
            .map_err(|e| Error::internal(format!("bad upstream URL: {e}")))
    }

    /// Asks the upstream for its index (conditionally, when one is known), and on a new one
    /// checks it parses, keeps it, and puts its parsed content in memory. Returns the metadata
    /// now current; a failure leaves the known index in place (the cache serves it stale).
    pub(super) async fn refresh(self: &Arc<Self>, known: Option<Bytes>) -> Result<Bytes> {
        let known = match known {
            Some(k) => Some(IndexMeta::decode(&k)?),
            None => self.import_legacy().await,
        };
        let validators = known
            .as_ref()
            .map(IndexMeta::validators)
            .unwrap_or_default();
        let url = self.index_url()?;
        let name = self.name();
        let fetched = self
            .client
            .get(
                name,
                &url,
                "application/x-yaml, application/yaml, application/json, */*",
                &validators,
                self.limits.max_index_bytes,
            )
            .await;
        match fetched {
            Ok(Fetch::NotModified) => match known {
                Some(k) => {
                    crate::metrics::index_refresh(name, "not_modified");
                    Ok(k.encode())
                }
                None => Err(Error::upstream_invalid(format!(
                    "{} answered 304 to an unconditional request",
                    redact(&url)
                ))),
            },
            Ok(Fetch::Body { bytes, validators }) => {
                let content = self
                    .build_content(bytes.clone())
                    .await
                    .inspect_err(|_| crate::metrics::index_refresh(name, "invalid"))?;
                crate::metrics::index_refresh(name, "updated");
                let meta = IndexMeta {
                    digest: Digest::of(&bytes).hex().to_string(),
                    etag: validators.etag,
                    last_modified: validators.last_modified,
                };
                // The raw index first, then (by the cache) the metadata naming it: a crash in
                // between leaves the old metadata, which only costs a full fetch.
                if let Err(e) = self.cache.refs().put(&self.raw_name(), bytes.clone()).await {
                    tracing::warn!(upstream = %name, error = %e, "cache write failed; serving without caching");
                    crate::metrics::cache_write_failure();
                }
                drop(bytes);
                let heap = content.heap;
                self.cache
                    .put_derived(self.content_key(&meta), content, heap);
                // The parse's garbage and the raw body are freed now; hand them back to the
                // system rather than keep the peak as resident memory.
                let _ = tokio::task::spawn_blocking(crate::cache::trim_heap).await;
                Ok(meta.encode())
            }
            Ok(Fetch::Missing) => {
                crate::metrics::index_refresh(name, "missing");
                Err(Error::upstream_invalid(format!(
                    "{} not found upstream",
                    redact(&url)
                )))
            }
            Err(e) => {
                crate::metrics::index_refresh(name, "error");
                Err(e)
            }
        }
    }

    /// The parsed content of a known index version, from its persisted raw copy (after a
    /// restart, or when memory let it go).
    pub(super) async fn load_content(&self, meta: &IndexMeta) -> Result<Arc<IndexContent>> {
        let raw = self
            .cache
            .refs()
            .get(&self.raw_name())
            .await?
            .ok_or_else(|| Error::internal("the persisted index is missing"))?;
        if Digest::of(&raw).hex() != meta.digest {
            return Err(Error::internal(
                "the persisted index does not match its metadata; it is fetched again after index_ttl",
            ));
        }
        let content = self.build_content(raw).await?;
        let _ = tokio::task::spawn_blocking(crate::cache::trim_heap).await;
        Ok(content)
    }

    /// An index kept by a release before refs (`indexes/<name>.yaml` and its `.json`
    /// validators), moved into the cache once.
    pub(super) async fn import_legacy(&self) -> Option<IndexMeta> {
        let raw = tokio::fs::read(&self.legacy_index).await.ok()?;
        let v: serde_json::Value = tokio::fs::read(self.legacy_index.with_extension("json"))
            .await
            .ok()
            .and_then(|m| serde_json::from_slice(&m).ok())
            .unwrap_or_default();
        let meta = IndexMeta {
            digest: Digest::of(&raw).hex().to_string(),
            etag: v["etag"].as_str().map(str::to_string),
            last_modified: v["last_modified"].as_str().map(str::to_string),
        };
        self.cache
            .refs()
            .put(&self.raw_name(), raw.into())
            .await
            .ok()?;
        self.cache
            .refs()
            .put(self.meta_name(), meta.encode())
            .await
            .ok()?;
        let _ = tokio::fs::remove_file(&self.legacy_index).await;
        let _ = tokio::fs::remove_file(self.legacy_index.with_extension("json")).await;
        tracing::info!(upstream = %self.name(), "moved the persisted index into the cache's refs");
        Some(meta)
    }

    /// Parses and rewrites an index off the async threads (a big index takes a second),
    /// keeping only what serving needs, and refuses one that alone would not fit the index
    /// memory budget.
    pub(super) async fn build_content(&self, bytes: Bytes) -> Result<Arc<IndexContent>> {
        let max_bytes = usize::try_from(self.limits.max_index_bytes).unwrap_or(usize::MAX);
        let (format, budget) = (
            self.config.index_format,
            self.cache.settings().derived_budget,
        );
        let content = tokio::task::spawn_blocking(move || {
            let index = parse_index(
                &bytes,
                IndexLimits {
                    max_bytes,
                    ..IndexLimits::default()
                },
            )?;
            drop(bytes);
            let out = rewrite(index, format);
            let served = Bytes::from(out.bytes);
            let heap = (served.len() + out.compact.heap_bytes()) as u64;
            Ok::<_, Error>(Arc::new(IndexContent {
                entries: out.compact,
                etag: format!("\"{}\"", Digest::of(&served).hex()),
                served,
                tag_lists: Mutex::default(),
                manifests: Mutex::default(),
                heap,
            }))
        })
        .await
        .map_err(|e| Error::internal(format!("index parse task failed: {e}")))??;
        if content.heap > budget {
            return Err(Error::upstream_invalid(format!(
                "the index needs {} MiB in memory once parsed, over cache.max_index_memory_bytes ({} MiB)",
                content.heap >> 20,
                budget >> 20
            )));
        }
        Ok(content)
    }
}
