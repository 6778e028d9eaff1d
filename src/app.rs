//! The application: builds the cache tiers and upstreams from a `Config` (and the upstreams
//! again on a reload, swapped in whole for new requests), turns each request
//! into a `Route` at the edge, dispatches it to a view, and maps any error through
//! `http::error_response`. Also the access log and the request metrics. No pingora types here,
//! so the whole request path is testable without sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::access::{Access, Throttle};
use crate::cache::{
    BlobCache, BlobStore, Bucket, BucketRefs, BucketStore, Cache, CacheSettings, DiskRefs,
    DiskStore, MemoryStore, RefStore,
};
use crate::config::Config;
use crate::config::UpstreamKind;
use crate::error::{Error, Kind, Result};
use crate::http::{error_response, Api, Request, Response};
use crate::ids::UpstreamName;
use crate::ids::{Reference, RepoName};
use crate::resolver::{HelmUpstream, OciUpstream, Source, Stores};
use crate::route::{self, OciOp, Route};
use crate::upstream::UpstreamClient;
use crate::views;

pub struct App {
    /// The configuration the process started with: listeners, grace period and cache, which
    /// only a restart changes.
    started: Config,
    /// The cache every upstream shares (kept across reloads).
    stores: Stores,
    /// Bounds bcrypt work and backs off addresses that keep failing, across upstreams.
    throttle: Throttle,
    /// The upstreams and routing, replaced whole by a reload. A request works on the `Live`
    /// it started with, so a reload never disturbs one in flight.
    live: ArcSwap<Live>,
}

/// What a reload replaces: the configuration's upstreams, limits and default, built.
struct Live {
    config: Config,
    upstreams: HashMap<UpstreamName, Source>,
}

impl App {
    pub async fn new(config: Config) -> Result<App> {
        let dir = &config.cache.dir;
        let disk = DiskStore::open(dir, config.cache.max_disk_bytes)
            .await
            .map_err(|e| Error::internal(format!("cannot open cache dir {}: {e}", dir.display())))?
            .with_verify_on_read(config.cache.verify_on_read);
        // With a shared bucket, the disk is each replica's local tier in front of it, and refs
        // live in the bucket so every replica sees them.
        let (store, refs): (Arc<dyn BlobStore>, Arc<dyn RefStore>) = match &config.cache.store {
            None => (Arc::new(disk), Arc::new(DiskRefs::open(dir)?)),
            Some(s) => {
                let bucket = Bucket::connect(s)?;
                let sweeper = bucket.clone();
                tokio::spawn(async move { sweeper.sweep().await });
                DiskRefs::open(dir)?; // the tmp/ directory imports stage in
                (
                    Arc::new(BucketStore::new(bucket.clone(), Arc::new(disk))),
                    Arc::new(BucketRefs::new(bucket)),
                )
            }
        };
        let blobs = BlobCache::new(MemoryStore::new(config.cache.max_memory_bytes), store);
        let settings = CacheSettings {
            negative_ttl: config.cache.negative_ttl,
            refresh_backoff: config.cache.refresh_backoff,
            derived_budget: config.cache.max_index_memory_bytes,
        };
        let stores = Stores::new(Arc::new(Cache::new(blobs, refs, settings)), dir.clone());
        let live = Live::build(config.clone(), &stores)?;
        Ok(App {
            started: config,
            stores,
            throttle: Throttle::default(),
            live: ArcSwap::from_pointee(live),
        })
    }

    /// The configuration the process started with (listeners, cache, grace period).
    pub fn config(&self) -> &Config {
        &self.started
    }

    /// The upstream named `name`, as configured now.
    pub fn source(&self, name: &str) -> Option<Source> {
        let live = self.live.load();
        live.upstreams
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, s)| s.clone())
    }

    /// Every configured upstream, in configuration order.
    pub fn sources(&self) -> Vec<Source> {
        let live = self.live.load();
        live.config
            .upstreams
            .iter()
            .filter_map(|u| live.upstreams.get(&u.name).cloned())
            .collect()
    }

    /// The `warm:` list of the configuration in force now, if it has one.
    pub fn warm_list(&self) -> Option<crate::airgap::list::WarmList> {
        self.live.load().config.warm.clone()
    }

    /// The shared read-through cache.
    pub fn cache(&self) -> &Arc<crate::cache::Cache> {
        &self.stores.cache
    }

    /// The limits in force now (a reload may change them).
    pub fn limits(&self) -> crate::config::Limits {
        self.live.load().config.limits
    }

    /// Replaces the upstreams, limits and default upstream with those of `new`, for requests
    /// that start from now on; requests in flight finish on the old ones. Refuses (and keeps
    /// everything as it is) when `new` changes what only a restart can: listeners, grace period,
    /// cache. Returns a one-line summary of what changed.
    pub fn reload(&self, new: Config) -> Result<String> {
        let s = &self.started;
        let mut fixed = Vec::new();
        if new.listen != s.listen {
            fixed.push("listen");
        }
        let tls = |c: &Config| {
            c.listen_tls
                .as_ref()
                .map(|t| (t.addr, t.client_ca_file.is_some()))
        };
        if tls(&new) != tls(s) {
            fixed.push("listen_tls.addr or whether listen_tls.client_ca_file is set");
        }
        if new.metrics_listen != s.metrics_listen {
            fixed.push("metrics_listen");
        }
        if new.shutdown_grace != s.shutdown_grace {
            fixed.push("shutdown_grace");
        }
        if new.cache != s.cache {
            fixed.push("cache");
        }
        if !fixed.is_empty() {
            return Err(Error::new(
                Kind::BadRequest,
                format!(
                    "{} changed: that needs a restart; the running configuration is kept",
                    fixed.join(", ")
                ),
            ));
        }
        let live = Live::build(new, &self.stores)?;
        let old = self.live.load();
        let names = |l: &Live| -> Vec<String> {
            l.config
                .upstreams
                .iter()
                .map(|u| u.name.to_string())
                .collect()
        };
        let (before, after) = (names(&old), names(&live));
        let added: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
        let removed: Vec<_> = before.iter().filter(|n| !after.contains(n)).collect();
        let summary = format!(
            "{} upstreams; added {added:?}, removed {removed:?}",
            after.len()
        );
        self.live.store(Arc::new(live));
        Ok(summary)
    }

    /// Handles one request. Never panics on input: every failure becomes an error response.
    pub async fn handle(&self, req: &Request) -> Response {
        let start = Instant::now();
        let api = if route::is_oci_path(&req.path) {
            Api::Oci
        } else {
            Api::Plain
        };
        let live = self.live.load_full();
        // `/` in a browser is the catalog page; every other client gets today's answer.
        let parsed = if req.path == "/" && live.config.catalog && views::page::wants_html(req) {
            Ok(Route::Page(route::Page::Home { q: None }))
        } else {
            route::parse(&req.method, &req.path, req.query.as_deref())
        };
        let kind = parsed.as_ref().map(Route::kind).unwrap_or("invalid");
        let live_now = &live;
        let (result, notes) = crate::metrics::with_request_context(move || async move {
            match parsed {
                Ok(r) => self.dispatch(live_now, r, req).await,
                Err(e) => Err(e),
            }
        })
        .await;
        let mut error = None;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_upstream() || e.kind() == Kind::Internal {
                    tracing::warn!(path = %req.path, error = %e, "request failed");
                }
                let r = error_response(&e, api);
                error = Some(e);
                r
            }
        };
        let mut resp = crate::http::finish(resp, req);
        if kind == "page" || req.path.starts_with("/-/") {
            resp = views::page::harden(resp);
        }
        let request_id = request_id(req.request_id.as_deref());
        resp.headers
            .push(("X-Request-Id", request_id.clone().into()));
        if resp.stale {
            // RFC 7234's stale warning: the upstream failed and a last-known answer was served.
            resp.headers
                .push(("Warning", "110 chartbridge \"Response is Stale\"".into()));
        }
        if api == Api::Oci && resp.get_header("Docker-Distribution-API-Version").is_none() {
            resp.headers
                .push(("Docker-Distribution-API-Version", "registry/2.0".into()));
        }
        if kind != "health" {
            let bytes = if req.is_head() {
                0
            } else {
                resp.content_length()
            };
            let took = start.elapsed();
            crate::metrics::request(kind, &req.method, resp.status, bytes, took);
            crate::access_log::log(&crate::access_log::Line {
                method: &req.method,
                path: &req.path,
                status: resp.status,
                request_id: &request_id,
                bytes,
                ms: took.as_millis() as u64,
                cache: if resp.stale { "stale" } else { notes.cache },
                upstream: notes.upstream,
                error: error.as_ref().map(|e| e.message()),
            });
        }
        resp
    }

    async fn dispatch(&self, live: &Live, route: Route, req: &Request) -> Result<Response> {
        match route {
            Route::ApiBase => {
                // `helm registry login` and `docker login` check credentials here: challenge
                // when some upstream needs them and none that any upstream accepts came along.
                let protected: Vec<_> = live
                    .config
                    .upstreams
                    .iter()
                    .filter_map(|u| u.access.as_ref())
                    .collect();
                let auth = req.authorization.as_deref();
                let ok = match auth {
                    None => protected.iter().all(|a| a.anonymous),
                    Some(h) => {
                        let mut any = protected.is_empty();
                        for a in &protected {
                            if any {
                                break;
                            }
                            any = a.valid(h, req.client, &self.throttle).await?;
                        }
                        any
                    }
                };
                if !ok {
                    return Err(Access::refuse(auth));
                }
                Ok(views::oci::api_base(req))
            }
            Route::Catalog { n, last } => {
                let readable = self.readable(live, req).await;
                let private = readable.iter().any(|(_, s)| s.config().access.is_some());
                Ok(
                    Box::pin(views::oci::catalog(readable, n, last.as_deref(), req))
                        .await?
                        .private(private),
                )
            }
            Route::Oci { name, ns, op } => {
                let (src, repo) = live.select(&name, ns.as_deref())?;
                self.authorize(src, req).await?;
                let private = src.config().access.is_some();
                let resp = match op {
                    OciOp::Tags { n, last } => {
                        views::oci::tags(src, &name, &repo, ns.as_deref(), n, last.as_deref(), req)
                            .await
                    }
                    OciOp::Manifest(reference) => {
                        let r = views::oci::manifest(src, &repo, &reference, req).await;
                        if let (Ok(_), Reference::Tag(_), false) = (&r, &reference, req.is_head()) {
                            crate::metrics::chart_pulled(src.config().name.as_str(), repo.as_str());
                        }
                        r
                    }
                    OciOp::Blob(d) => views::oci::blob(src, &repo, &d, req).await,
                    OciOp::Referrers(d, q) => {
                        Box::pin(views::oci::referrers(src, &repo, &d, q.as_deref(), req)).await
                    }
                };
                Ok(resp?.private(private))
            }
            Route::MirrorIndex { upstream, repo } => {
                let src = live.upstream(&upstream)?;
                self.authorize(src, req).await?;
                Ok(Box::pin(views::mirror::index(src, repo.as_ref(), req))
                    .await?
                    .private(src.config().access.is_some()))
            }
            Route::MirrorArchive {
                upstream,
                repo,
                chart,
                version,
                prov,
            } => {
                let src = live.upstream(&upstream)?;
                self.authorize(src, req).await?;
                let resp = views::mirror::archive(src, repo.as_ref(), &chart, &version, prov, req)
                    .await?
                    .private(src.config().access.is_some());
                if !prov && !req.is_head() {
                    let name = repo.as_ref().map_or(chart.clone(), |r| r.to_string());
                    crate::metrics::chart_pulled(upstream.as_str(), &name);
                }
                Ok(resp)
            }
            Route::Page(p) => {
                if !live.config.catalog {
                    return Err(Error::new(
                        Kind::NotFound,
                        "the catalog page is turned off (catalog: false)",
                    ));
                }
                Box::pin(self.page(live, p, req)).await
            }
            Route::Metrics => Ok(Response::new(200).with_body(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(crate::metrics::render()),
                req.is_head(),
            )),
            Route::Healthz => Ok(Response::new(200).with_body(
                "text/plain",
                Bytes::from_static(b"ok\n"),
                req.is_head(),
            )),
            Route::Readyz => {
                let probe = self.started.cache.dir.join("tmp").join(".ready");
                tokio::fs::write(&probe, b"")
                    .await
                    .map_err(|e| Error::internal(format!("cache dir not writable: {e}")))?;
                Ok(Response::new(200).with_body(
                    "text/plain",
                    Bytes::from_static(b"ready\n"),
                    req.is_head(),
                ))
            }
        }
    }
}

/// The request's id: the client's (or a front proxy's) `X-Request-Id` when it is a sane token
/// (1 to 128 of `A-Z a-z 0-9 . _ : -`), else a new one, unique in this process and unlikely
/// to repeat across restarts.
fn request_id(given: Option<&str>) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    if let Some(id) = given {
        let sane = (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if sane {
            return id.to_string();
        }
    }
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    format!("{seed:016x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl App {
    /// A catalog page: only upstreams this request may pull from are shown; a page of a
    /// protected upstream is 401 without its credentials.
    async fn page(&self, live: &Live, p: route::Page, req: &Request) -> Result<Response> {
        use route::Page;
        let visible = self.readable(live, req).await;
        let site = views::page::Site {
            upstreams: visible.into_iter().map(|(_, s)| s).collect(),
            cache: self.cache(),
            req,
        };
        match p {
            Page::Home { q } => views::page::home(&site, q.as_deref()).await,
            Page::Style => Ok(views::page::style(req)),
            Page::Upstream {
                upstream,
                page,
                filter,
            } => {
                let src = live.upstream(&upstream)?;
                self.authorize(src, req).await?;
                views::page::upstream(&site, src, page, filter.as_deref()).await
            }
            Page::Chart {
                upstream,
                chart,
                version,
                page,
            } => {
                let src = live.upstream(&upstream)?;
                self.authorize(src, req).await?;
                views::page::chart(&site, src, &chart, version.as_deref(), page).await
            }
            Page::Fetch {
                upstream,
                chart,
                version,
            } => {
                let src = live.upstream(&upstream)?;
                self.authorize(src, req).await?;
                views::page::fetch(&site, src, &chart, &version).await
            }
        }
        .map(|r| r.private(live.config.upstreams.iter().any(|u| u.access.is_some())))
    }

    /// The upstreams this request may read, in configuration order, for listings (`_catalog`,
    /// the page). Its credentials are tried on every protected upstream, but count as one
    /// failed login only when no upstream accepts them.
    async fn readable<'a>(
        &self,
        live: &'a Live,
        req: &Request,
    ) -> Vec<(&'a UpstreamName, &'a Source)> {
        let mut out = Vec::new();
        let (mut tried, mut accepted) = (false, false);
        for u in &live.config.upstreams {
            let Some(src) = live.upstreams.get(&u.name) else {
                continue;
            };
            let ok = match (&u.access, req.authorization.as_deref()) {
                (None, _) => true,
                (Some(a), None) => a.anonymous,
                (Some(a), Some(h)) => {
                    tried = true;
                    let ok = a
                        .accepts(h, req.client, &self.throttle)
                        .await
                        .unwrap_or(false);
                    accepted |= ok;
                    ok
                }
            };
            if ok {
                out.push((&u.name, src));
            }
        }
        if tried && !accepted {
            self.throttle.refused(req.client);
        }
        out
    }

    /// Refuses a request to a protected upstream without credentials it accepts.
    async fn authorize(&self, src: &Source, req: &Request) -> Result<()> {
        match &src.config().access {
            Some(a) => {
                a.check(req.authorization.as_deref(), req.client, &self.throttle)
                    .await
            }
            None => Ok(()),
        }
    }
}

impl Live {
    /// Builds every configured upstream over the shared cache tiers.
    fn build(config: Config, stores: &Stores) -> Result<Live> {
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            let client = Arc::new(UpstreamClient::new(u.policy.clone(), &u.url)?);
            let source = match u.kind {
                UpstreamKind::Helm => Source::Helm(Arc::new(HelmUpstream::new(
                    u.clone(),
                    client,
                    stores,
                    config.limits,
                )?)),
                UpstreamKind::Oci => Source::Oci(Arc::new(OciUpstream::new(
                    u.clone(),
                    client,
                    stores,
                    config.limits,
                ))),
            };
            upstreams.insert(u.name.clone(), source);
        }
        Ok(Live { config, upstreams })
    }

    fn upstream(&self, name: &UpstreamName) -> Result<&Source> {
        let src = self.upstreams.get(name).ok_or_else(|| {
            Error::new(
                Kind::NameUnknown,
                format!("no upstream named {name:?} is configured"),
            )
        })?;
        crate::metrics::note_upstream(name.as_str());
        Ok(src)
    }

    /// Which upstream serves a repository name, and the name below it: containerd's `ns`
    /// (matched against each upstream's registry host; an unknown host is never dialled), else a
    /// path prefix naming an upstream, else the default upstream.
    fn select(&self, name: &RepoName, ns: Option<&str>) -> Result<(&Source, RepoName)> {
        if let Some(ns) = ns {
            let host = match ns {
                "docker.io" | "index.docker.io" => "registry-1.docker.io",
                h => h,
            };
            let u = self
                .config
                .upstreams
                .iter()
                .find(|u| {
                    u.host_port() == host || (u.is_docker_hub() && host == "registry-1.docker.io")
                })
                .ok_or_else(|| {
                    Error::new(
                        Kind::NameUnknown,
                        format!("no upstream is configured for registry {ns:?}"),
                    )
                })?;
            return Ok((self.upstream(&u.name)?, name.clone()));
        }
        if let Some((first, rest)) = name.as_str().split_once('/') {
            if let Ok(up) = first.parse::<UpstreamName>() {
                if let Some(src) = self.upstreams.get(&up) {
                    crate::metrics::note_upstream(up.as_str());
                    return Ok((src, rest.parse()?));
                }
            }
        }
        match &self.config.default_upstream {
            Some(d) => Ok((self.upstream(d)?, name.clone())),
            None => Err(Error::new(
                Kind::NameUnknown,
                format!("{name:?} names no configured upstream (use /v2/<upstream>/<repository>)"),
            )),
        }
    }
}

#[cfg(test)]
mod future_sizes {
    /// Every request's future is built on the stack and moved into its parent's state, so its
    /// size is copied per request, at each level: the warm path's futures must stay small (cold
    /// steps are boxed, `with_request_context` stores its future once). This caught a 30 KB
    /// request future, which cost about a fifth of the warm path's CPU in memmove.
    #[tokio::test]
    async fn the_warm_path_futures_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::from_yaml(
            &format!(
                "listen: 127.0.0.1:0\ncache:\n  dir: {}\nupstreams:\n  - name: reg\n    kind: oci\n    url: http://127.0.0.1:1\n",
                dir.path().display()
            ),
            "test",
        )
        .unwrap();
        let app = super::App::new(cfg).await.unwrap();
        let req = crate::http::Request::default();
        let src = app.source("reg").unwrap();
        let repo: crate::ids::RepoName = "a/b".parse().unwrap();
        let d = crate::ids::Digest::of(b"");
        let r: crate::ids::Reference = "v1".parse().unwrap();
        use crate::views::{mirror, oci};
        let sizes = [
            ("handle", std::mem::size_of_val(&app.handle(&req))),
            (
                "blob",
                std::mem::size_of_val(&oci::blob(&src, &repo, &d, &req)),
            ),
            (
                "manifest",
                std::mem::size_of_val(&oci::manifest(&src, &repo, &r, &req)),
            ),
            (
                "tags",
                std::mem::size_of_val(&oci::tags(&src, &repo, &repo, None, None, None, &req)),
            ),
            (
                "archive",
                std::mem::size_of_val(&mirror::archive(&src, None, "a", "1", false, &req)),
            ),
        ];
        for (what, size) in sizes {
            assert!(size <= 8 * 1024, "the {what} future is {size} bytes");
        }
    }
}
