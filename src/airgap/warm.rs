//! `chartbridge warm`: fetches everything a warm list names through the same resolvers and
//! cache as `serve` (same verification, same links, same refs), a few items at a time, with a
//! progress bar per item on a terminal and plain lines otherwise. Idempotent: what is cached is
//! not fetched again (tags and indexes are still revalidated, which costs a HEAD or a 304).

use std::sync::Arc;

use futures::StreamExt;

use super::list::{chart_images, split_image, Platform, Selector, WarmList};
use crate::app::App;
use crate::convert::chart::ChartMetadata;
use crate::convert::manifest::chart_layers;
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Reference, RepoName, Tag};
use crate::progress::Progress;
use crate::resolver::oci::BlobAnswer;
use crate::resolver::{HelmUpstream, OciUpstream, Source};

/// What a warm run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Everything the list named: cached + fetched + failed.
    pub items: usize,
    /// Items whose every blob was in the cache already.
    pub cached: usize,
    /// Items that needed something from an upstream.
    pub fetched: usize,
    /// Bytes fetched from upstreams.
    pub bytes: u64,
    /// (item, why)
    pub failed: Vec<(String, String)>,
    /// Images charts named whose registry no upstream covers.
    pub uncovered: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "warm: {} items, {} already cached, {} fetched ({}), {} failed",
            self.items,
            self.cached,
            self.fetched,
            human_bytes(self.bytes),
            self.failed.len()
        )?;
        for (item, why) in &self.failed {
            writeln!(f, "  failed: {item}: {why}")?;
        }
        for image in &self.uncovered {
            writeln!(f, "  skipped: {image}: no OCI upstream covers its registry")?;
        }
        Ok(())
    }
}

pub use crate::progress::human_bytes;

/// One thing to fetch.
enum Item {
    Chart {
        up: Arc<HelmUpstream>,
        chart: String,
        version: String,
        /// Platforms of the chart's images, when they are warmed too.
        images: Option<Vec<String>>,
    },
    Oci {
        up: Arc<OciUpstream>,
        repo: RepoName,
        reference: Reference,
        platforms: Vec<String>,
        /// Platforms of the chart's images, when this is a chart whose images are warmed too.
        images: Option<Vec<String>>,
    },
}

impl Item {
    fn name(&self) -> String {
        match self {
            Item::Chart {
                up, chart, version, ..
            } => format!("{}/{chart} {version}", up.config.name),
            Item::Oci {
                up,
                repo,
                reference,
                ..
            } => match reference {
                Reference::Tag(t) => format!("{}/{repo}:{t}", up.config.name),
                Reference::Digest(d) => format!("{}/{repo}@{d}", up.config.name),
            },
        }
    }
}

/// What one item did.
#[derive(Default)]
struct Outcome {
    cached: bool,
    /// Image references the chart declares (`images: true`), with the platforms to keep.
    images: Vec<(String, Vec<String>)>,
}

/// The line an item leaves behind.
fn outcome_line(name: &str, result: &Result<Outcome>) -> String {
    match result {
        Ok(o) if o.cached => format!("cached  {name}"),
        Ok(_) => format!("fetched {name}"),
        Err(e) => format!("FAILED  {name}: {e}"),
    }
}

/// Warms from `list` on a thread of its own, logging the summary (the configuration's `warm:`
/// list, while `serve` runs).
pub fn in_background(app: Arc<App>, list: WarmList) {
    let spawned = std::thread::Builder::new()
        .name("chartbridge-warm".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "cannot start warming"),
            };
            let summary = rt.block_on(async {
                let s = warm(&app, &list).await;
                app.cache().flush().await;
                s
            });
            for (item, why) in &summary.failed {
                tracing::warn!(%item, %why, "warm: failed");
            }
            tracing::info!(
                items = summary.items,
                cached = summary.cached,
                failed = summary.failed.len(),
                bytes = summary.bytes,
                "warm: done"
            );
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start warming");
    }
}

/// Fetches everything `list` names into `app`'s cache.
pub async fn warm(app: &App, list: &WarmList) -> Summary {
    let progress = Progress::new("warm", "fetched");
    let mut summary = Summary::default();
    // First the charts and images the list names, then the images the charts declare.
    let (items, mut failed) = expand(app, list).await;
    summary.failed.append(&mut failed);
    let outcomes = run(items, list.concurrency(), &progress, &mut summary).await;
    let mut image_items = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (image, platforms) in outcomes {
        if !seen.insert(image.clone()) {
            continue;
        }
        match image_item(app, &image, platforms) {
            Ok(Some(item)) => image_items.push(item),
            Ok(None) => {
                tracing::warn!(%image, "no OCI upstream covers this image's registry; skipped");
                summary.uncovered.push(image);
            }
            Err(e) => summary.failed.push((image, e.to_string())),
        }
    }
    run(image_items, list.concurrency(), &progress, &mut summary).await;
    progress.finish();
    summary.bytes = progress.total_bytes();
    // failures include selectors and images that never became an item
    summary.items = summary.cached + summary.fetched + summary.failed.len();
    summary
}

/// Runs items N at a time, recording outcomes; returns the images charts declared.
async fn run(
    items: Vec<Item>,
    concurrency: usize,
    progress: &Progress,
    summary: &mut Summary,
) -> Vec<(String, Vec<String>)> {
    progress.add_items(items.len());
    let results: Vec<(String, Result<Outcome>)> = futures::stream::iter(items)
        .map(|item| async move {
            let name = item.name();
            let bar = progress.item(&name);
            let result = warm_item(&item, progress, bar.as_ref()).await;
            progress.done(bar, &outcome_line(&name, &result));
            (name, result)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut images = Vec::new();
    for (name, r) in results {
        match r {
            Ok(o) => {
                if o.cached {
                    summary.cached += 1;
                } else {
                    summary.fetched += 1;
                }
                images.extend(o.images);
            }
            Err(e) => summary.failed.push((name, e.to_string())),
        }
    }
    images
}

/// The items a list names (selectors resolved against the upstreams' versions and tags).
async fn expand(app: &App, list: &WarmList) -> (Vec<Item>, Vec<(String, String)>) {
    let mut items = Vec::new();
    let mut failed = Vec::new();
    for u in &list.upstreams {
        let Some(src) = app.source(&u.name) else {
            failed.push((
                u.name.clone(),
                "no upstream of that name is configured".into(),
            ));
            continue;
        };
        for c in &u.charts {
            let at = format!("{}/{}", u.name, c.chart);
            let selector = match (&c.version, c.newest) {
                (Some(v), _) => Selector::parse(v),
                (None, Some(n)) => Ok(Selector::Newest(n)),
                (None, None) => Err("no version selector".into()),
            };
            let selector = match selector {
                Ok(s) => s,
                Err(e) => {
                    failed.push((at, e));
                    continue;
                }
            };
            let images = c.images.then(|| c.platforms.clone());
            match &src {
                Source::Helm(up) => match up.index().await {
                    Ok(index) => {
                        let versions: Vec<&str> = match index.value.entries().versions(&c.chart) {
                            Some(v) => v.map(|e| e.version).collect(),
                            None => {
                                failed.push((at, "no such chart upstream".into()));
                                continue;
                            }
                        };
                        let picked = selector.versions(&versions);
                        if picked.is_empty() {
                            failed.push((at, "no version matches".into()));
                        }
                        for v in picked {
                            items.push(Item::Chart {
                                up: up.clone(),
                                chart: c.chart.clone(),
                                version: v.to_string(),
                                images: images.clone(),
                            });
                        }
                    }
                    Err(e) => failed.push((at, e.to_string())),
                },
                Source::Oci(up) => match oci_tags(up, &c.chart, &selector).await {
                    Ok((repo, tags)) => {
                        for t in tags {
                            items.push(Item::Oci {
                                up: up.clone(),
                                repo: repo.clone(),
                                reference: Reference::Tag(t),
                                platforms: Vec::new(),
                                images: images.clone(),
                            });
                        }
                    }
                    Err(e) => failed.push((at, e.to_string())),
                },
            }
        }
        for im in &u.images {
            let at = format!("{}/{}", u.name, im.repository);
            let Source::Oci(up) = &src else {
                failed.push((at, "images are warmed from OCI upstreams only".into()));
                continue;
            };
            for t in &im.tags {
                let picked = match Selector::parse(t) {
                    Ok(s) => oci_tags(up, &im.repository, &s).await,
                    Err(e) => Err(Error::new(Kind::BadRequest, e)),
                };
                match picked {
                    Ok((repo, tags)) => {
                        for tag in tags {
                            items.push(Item::Oci {
                                up: up.clone(),
                                repo: repo.clone(),
                                reference: Reference::Tag(tag),
                                platforms: im.platforms.clone(),
                                images: None,
                            });
                        }
                    }
                    Err(e) => failed.push((format!("{at}:{t}"), e.to_string())),
                }
            }
        }
    }
    (items, failed)
}

/// The tags of an OCI repository a selector names (`latest` stays `latest`, so the upstream's
/// policy resolves it).
async fn oci_tags(
    up: &Arc<OciUpstream>,
    repo: &str,
    selector: &Selector,
) -> Result<(RepoName, Vec<Tag>)> {
    let repo: RepoName = repo.parse()?;
    let tags: Vec<String> = match selector {
        Selector::Latest => vec![version::LATEST.to_string()],
        Selector::Exact(t) => vec![t.clone()],
        Selector::Range(_) | Selector::Newest(_) => {
            let all = up.tags_upstream_only(&repo).await?.value;
            // tags name versions with `_` for `+`
            let as_versions: Vec<String> = all.iter().map(|t| t.replace('_', "+")).collect();
            let refs: Vec<&str> = as_versions.iter().map(String::as_str).collect();
            selector
                .versions(&refs)
                .into_iter()
                .map(version::tag_for_version)
                .collect()
        }
    };
    if tags.is_empty() {
        return Err(Error::new(Kind::ManifestUnknown, "no tag matches"));
    }
    let tags = tags
        .iter()
        .map(|t| t.parse::<Tag>())
        .collect::<Result<Vec<_>>>()?;
    Ok((repo, tags))
}

/// The warm item for an image a chart declares: through the OCI upstream whose registry host
/// it names (`None` when no upstream covers it).
fn image_item(app: &App, image: &str, platforms: Vec<String>) -> Result<Option<Item>> {
    let (host, repo, reference) =
        split_image(image).map_err(|e| Error::new(Kind::BadRequest, e))?;
    let host = match host.as_str() {
        "docker.io" | "index.docker.io" => "registry-1.docker.io".to_string(),
        h => h.to_string(),
    };
    let up = app.sources().into_iter().find_map(|s| match s {
        Source::Oci(o)
            if o.config.host_port() == host
                || (o.config.is_docker_hub() && host == "registry-1.docker.io") =>
        {
            Some(o)
        }
        _ => None,
    });
    let Some(up) = up else {
        return Ok(None);
    };
    let repo = match repo.strip_prefix("library/") {
        Some(r) if up.config.is_docker_hub() && !r.contains('/') => r.to_string(),
        _ => repo,
    };
    Ok(Some(Item::Oci {
        up,
        repo: repo.parse()?,
        reference: reference.parse()?,
        platforms,
        images: None,
    }))
}

async fn warm_item(
    item: &Item,
    progress: &Progress,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Outcome> {
    match item {
        Item::Chart {
            up,
            chart,
            version,
            images,
        } => {
            let index = up.index().await?;
            let at = up.locate(&index.value, chart, version)?;
            let cache = up.cache();
            let cached = match &at.digest {
                Some(d) => cache.has_blob(d).await? && up.manifest_known(&at).await,
                None => up.manifest_known(&at).await,
            };
            let m = up.manifest(&at).await?;
            if !cached {
                let (archive, _) = up.archive(&at).await?;
                progress.bytes(bar, archive.len() as u64);
            }
            let mut out = Outcome {
                cached,
                images: Vec::new(),
            };
            if let Some(platforms) = images {
                let config = chart_layers(&m.bytes)
                    .map(|l| l.config)
                    .ok_or_else(|| Error::internal("a synthesised manifest without a config"))?;
                out.images = declared_images(&cache.cached_bytes(&config).await?, platforms)?;
            }
            Ok(out)
        }
        Item::Oci {
            up,
            repo,
            reference,
            platforms,
            images,
        } => {
            let m = up.manifest(repo, reference).await?.value;
            let mut cached = true;
            let mut out = Outcome::default();
            for d in needed_blobs(up, repo, &m.bytes, platforms).await? {
                cached &= warm_blob(up, repo, &d, progress, bar).await?;
            }
            if let (Some(platforms), Some(layers)) = (images, chart_layers(&m.bytes)) {
                let config = up.cache().cached_bytes(&layers.config).await?;
                if let Some(c) = config {
                    out.images = declared_images(&Some(c), platforms)?;
                }
            }
            out.cached = cached;
            Ok(out)
        }
    }
}

/// The blobs an artifact needs: a manifest's config and layers, or, for an index, those of
/// each child manifest for the wanted platforms (fetched on the way).
async fn needed_blobs(
    up: &Arc<OciUpstream>,
    repo: &RepoName,
    manifest: &[u8],
    platforms: &[String],
) -> Result<Vec<Digest>> {
    #[derive(serde::Deserialize)]
    struct Platform_ {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Child {
        digest: String,
        platform: Option<Platform_>,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Option<Vec<Child>>,
    }
    let index: Index = serde_json::from_slice(manifest)
        .map_err(|e| Error::upstream_invalid(format!("a manifest is not JSON: {e}")))?;
    let Some(children) = index.manifests else {
        return Ok(crate::cache::referenced(manifest));
    };
    let mut blobs = Vec::new();
    for c in children {
        let keep = match &c.platform {
            Some(p) => Platform::wanted(
                platforms,
                p.os.as_deref().unwrap_or_default(),
                p.architecture.as_deref().unwrap_or_default(),
                p.variant.as_deref(),
            ),
            None => true,
        };
        if !keep {
            continue;
        }
        let d: Digest = c.digest.parse()?;
        let child = up.manifest(repo, &Reference::Digest(d)).await?.value;
        blobs.extend(crate::cache::referenced(&child.bytes));
    }
    Ok(blobs)
}

/// Fetches one blob into the cache (reading a cold stream to its end); true when it was cached
/// already.
async fn warm_blob(
    up: &Arc<OciUpstream>,
    repo: &RepoName,
    d: &Digest,
    progress: &Progress,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<bool> {
    match up.blob(repo, d, false, None).await? {
        BlobAnswer::Data(_) => Ok(true),
        BlobAnswer::Head(_) => Ok(true),
        BlobAnswer::Stream(_, rx) | BlobAnswer::Partial { rx, .. } => {
            let mut rx = rx;
            while let Some(chunk) = rx.recv().await {
                progress.bytes(bar, chunk?.len() as u64);
            }
            // The stream ends before the blob is durably stored: wait for that too.
            up.settled(repo, d).await?;
            Ok(false)
        }
    }
}

/// The images a chart's config blob (its Chart.yaml as JSON) declares in
/// `artifacthub.io/images`.
fn declared_images(
    config: &Option<bytes::Bytes>,
    platforms: &[String],
) -> Result<Vec<(String, Vec<String>)>> {
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    let meta: ChartMetadata = serde_json::from_slice(config)
        .map_err(|e| Error::upstream_invalid(format!("a chart config is not JSON: {e}")))?;
    let Some(annotation) = meta.annotations.get("artifacthub.io/images") else {
        return Ok(Vec::new());
    };
    let images = chart_images(annotation).map_err(Error::upstream_invalid)?;
    Ok(images
        .into_iter()
        .map(|i| (i, platforms.to_vec()))
        .collect())
}
