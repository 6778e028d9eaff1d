//! `chartbridge sync`: publishes what an upstream serves here into a registry, so that the
//! registry holds it without chartbridge. Everything pushed is read through the same resolvers
//! and cache as `serve` (verified, cached, linked): a helm upstream's versions as the
//! manifests, config blobs and layers chartbridge synthesises (byte-identical to `helm push` of
//! the same archive but for its `created` annotation, which comes from the index), an OCI
//! upstream's manifests, children of an index (every platform) and blobs byte for byte.
//! Blobs first, then manifests by digest, then tags: a target never names what it lacks, and a
//! run cut short is resumed by running it again (what is there is skipped after a HEAD).
//! Optionally the synthesised `latest` and floating tags go along, and move on later runs.

pub mod target;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;

use crate::airgap::list::Selector;
use crate::app::App;
use crate::cache::BlobData;
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Reference, RepoName, Tag};
use crate::progress::{human_bytes, Progress};
use crate::resolver::oci::BlobAnswer;
use crate::resolver::{HelmUpstream, OciUpstream, Source};
use target::{BlobPush, Target};

/// What to sync.
pub struct SyncOptions {
    /// The upstream to read.
    pub from: String,
    /// Charts (helm upstream) or repositories (OCI upstream); empty: every chart of a helm
    /// upstream, the configured `charts:` of an OCI one.
    pub charts: Vec<String>,
    /// A version selector (`>=0.13`, `0.14.2`, `latest`, `newest:N` is not a string here).
    pub versions: Option<String>,
    /// Also push the synthesised `latest` and floating tags that point at pushed versions.
    pub floating: bool,
    /// Only say what would be pushed.
    pub dry_run: bool,
    /// Versions (or tags) pushed at once.
    pub concurrency: usize,
}

/// What a sync did (or, with `--dry-run`, would do).
#[derive(Debug, Default)]
pub struct Summary {
    pub dry_run: bool,
    /// Versions or tags selected.
    pub items: usize,
    /// Items that needed something pushed.
    pub pushed: usize,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub bytes: u64,
    pub manifests_pushed: usize,
    pub manifests_present: usize,
    pub tags_pushed: usize,
    pub tags_present: usize,
    /// (item, why)
    pub failed: Vec<(String, String)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let would = if self.dry_run { "would push" } else { "pushed" };
        writeln!(
            f,
            "sync: {} items, {} {would}, {} already there; blobs: {} {} ({}), {} mounted, {} present; \
             manifests: {} {}, {} present; tags: {} {}, {} present; {} failed",
            self.items,
            self.pushed,
            self.items.saturating_sub(self.pushed + self.failed.len()),
            self.blobs_uploaded,
            if self.dry_run { "to upload" } else { "uploaded" },
            human_bytes(self.bytes),
            self.blobs_mounted,
            self.blobs_present,
            self.manifests_pushed,
            would,
            self.manifests_present,
            self.tags_pushed,
            would,
            self.tags_present,
            self.failed.len()
        )?;
        for (item, why) in &self.failed {
            writeln!(f, "  failed: {item}: {why}")?;
        }
        Ok(())
    }
}

/// One manifest to push, with the blobs it needs (children of an index come before it).
struct Artifact {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
    blobs: Vec<(Digest, u64)>,
}

/// One selected version (helm) or tag (OCI), resolved against the source.
struct Item {
    /// Source chart or repository.
    source_repo: String,
    /// Target repository.
    repo: String,
    /// Children first, the tagged manifest last.
    artifacts: Vec<Artifact>,
    tag: String,
}

/// The upstream read from.
#[derive(Clone)]
enum From {
    Helm(Arc<HelmUpstream>),
    Oci(Arc<OciUpstream>),
}

/// What one item did.
#[derive(Default)]
struct Counts {
    blobs_uploaded: usize,
    blobs_mounted: usize,
    blobs_present: usize,
    bytes: u64,
    manifests_pushed: usize,
    manifests_present: usize,
    tags_pushed: usize,
    tags_present: usize,
}

impl Counts {
    fn pushed_any(&self) -> bool {
        self.blobs_uploaded + self.blobs_mounted + self.manifests_pushed + self.tags_pushed > 0
    }

    fn add_to(&self, s: &mut Summary) {
        s.blobs_uploaded += self.blobs_uploaded;
        s.blobs_mounted += self.blobs_mounted;
        s.blobs_present += self.blobs_present;
        s.bytes += self.bytes;
        s.manifests_pushed += self.manifests_pushed;
        s.manifests_present += self.manifests_present;
        s.tags_pushed += self.tags_pushed;
        s.tags_present += self.tags_present;
    }
}

/// Where each blob is known to be on the target (for cross-repository mounts).
type Seen = Mutex<HashMap<Digest, String>>;

/// Pushes what `opts` selects from `app`'s upstream into `target`.
pub async fn sync(app: &App, target: &Target, opts: &SyncOptions) -> Result<Summary> {
    let from = match app.source(&opts.from) {
        Some(Source::Helm(h)) => From::Helm(h),
        Some(Source::Oci(o)) => From::Oci(o),
        None => {
            return Err(Error::new(
                Kind::BadRequest,
                format!(
                    "--from {:?}: no upstream of that name is configured",
                    opts.from
                ),
            ))
        }
    };
    let selector = opts
        .versions
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| Error::new(Kind::BadRequest, format!("--versions: {e}")))?;
    let progress = Arc::new(Progress::new(
        "sync",
        if opts.dry_run { "to push" } else { "pushed" },
    ));
    let mut summary = Summary {
        dry_run: opts.dry_run,
        ..Summary::default()
    };
    let (selected, mut failed) = select(&from, opts, selector.as_ref()).await?;
    summary.items = selected.len() + failed.len();
    summary.failed.append(&mut failed);
    progress.add_items(selected.len());
    let seen: Seen = Mutex::default();
    let results: Vec<(String, Result<(Item, Counts)>)> = futures::stream::iter(selected)
        .map(|(name, sel)| {
            let (from, progress, seen) = (from.clone(), &progress, &seen);
            async move {
                let bar = progress.item(&name);
                let result = async {
                    let item = resolve(&from, sel, target).await?;
                    let counts = push_item(
                        &from,
                        target,
                        &item,
                        opts.dry_run,
                        seen,
                        progress,
                        bar.as_ref(),
                    )
                    .await?;
                    Ok((item, counts))
                }
                .await;
                let line = match &result {
                    Ok((_, c)) if c.pushed_any() && opts.dry_run => format!("would push {name}"),
                    Ok((_, c)) if c.pushed_any() => format!("pushed  {name}"),
                    Ok(_) => format!("present {name}"),
                    Err(e) => format!("FAILED  {name}: {e}"),
                };
                progress.done(bar, &line);
                (name, result)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut pushed: Vec<Item> = Vec::new();
    for (name, r) in results {
        match r {
            Ok((item, counts)) => {
                if counts.pushed_any() {
                    summary.pushed += 1;
                }
                counts.add_to(&mut summary);
                pushed.push(item);
            }
            Err(e) => summary.failed.push((name, e.to_string())),
        }
    }
    if opts.floating {
        match floating(&from, &pushed).await {
            Ok(tags) => {
                for (repo, tag, item) in tags {
                    let top = item.artifacts.last().expect("an item has its manifest");
                    let name = format!("{}:{tag}", target.display(&repo));
                    let mut c = Counts::default();
                    match push_tag(target, &repo, &tag, top, opts.dry_run, &mut c).await {
                        Ok(()) => {
                            let line = if c.tags_pushed > 0 {
                                format!("tagged  {name} -> {}", item.tag)
                            } else {
                                format!("present {name}")
                            };
                            progress.done(None, &line);
                            c.add_to(&mut summary);
                        }
                        Err(e) => summary.failed.push((name, e.to_string())),
                    }
                }
            }
            Err(e) => summary.failed.push(("floating tags".into(), e.to_string())),
        }
    }
    progress.finish();
    Ok(summary)
}

/// A selected version or tag, before it is resolved.
enum Selected {
    Helm { chart: String, version: String },
    Oci { repo: RepoName, tag: Tag },
}

/// The versions (or tags) `opts` selects, named; and what could not be selected.
async fn select(
    from: &From,
    opts: &SyncOptions,
    selector: Option<&Selector>,
) -> Result<(Vec<(String, Selected)>, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    match from {
        From::Helm(up) => {
            let index = up.index().await?;
            let entries = index.value.entries();
            let charts: Vec<String> = if opts.charts.is_empty() {
                entries.charts().map(str::to_string).collect()
            } else {
                opts.charts.clone()
            };
            for chart in charts {
                let Some(versions) = entries.versions(&chart) else {
                    failed.push((
                        format!("{}/{chart}", opts.from),
                        "no such chart upstream".into(),
                    ));
                    continue;
                };
                let versions: Vec<&str> = versions.map(|e| e.version).collect();
                let picked = match selector {
                    Some(s) => s.versions(&versions),
                    None => versions.clone(),
                };
                if picked.is_empty() {
                    failed.push((
                        format!("{}/{chart}", opts.from),
                        "no version matches".into(),
                    ));
                }
                for v in picked {
                    out.push((
                        format!("{}/{chart} {v}", opts.from),
                        Selected::Helm {
                            chart: chart.clone(),
                            version: v.to_string(),
                        },
                    ));
                }
            }
        }
        From::Oci(up) => {
            let repos: Vec<String> = if opts.charts.is_empty() {
                up.config.charts.iter().map(|r| r.to_string()).collect()
            } else {
                opts.charts.clone()
            };
            if repos.is_empty() {
                return Err(Error::new(
                    Kind::BadRequest,
                    format!(
                        "--from {}: name the repositories (charts or images) with --chart",
                        opts.from
                    ),
                ));
            }
            for r in repos {
                let at = format!("{}/{r}", opts.from);
                let picked = async {
                    let repo: RepoName = r.parse()?;
                    let all = up.tags_upstream_only(&repo).await?.value;
                    let tags: Vec<String> = match selector {
                        None => all.as_ref().clone(),
                        Some(Selector::Exact(t)) => vec![t.clone()],
                        Some(Selector::Latest) => vec![version::LATEST.to_string()],
                        Some(s) => {
                            let as_versions: Vec<String> =
                                all.iter().map(|t| t.replace('_', "+")).collect();
                            let refs: Vec<&str> = as_versions.iter().map(String::as_str).collect();
                            s.versions(&refs)
                                .into_iter()
                                .map(version::tag_for_version)
                                .collect()
                        }
                    };
                    let tags = tags
                        .iter()
                        .map(|t| t.parse::<Tag>())
                        .collect::<Result<Vec<_>>>()?;
                    Ok::<_, Error>((repo, tags))
                }
                .await;
                match picked {
                    Ok((_, tags)) if tags.is_empty() => {
                        failed.push((at, "no tag matches".into()));
                    }
                    Ok((repo, tags)) => {
                        for tag in tags {
                            out.push((
                                format!("{at}:{tag}"),
                                Selected::Oci {
                                    repo: repo.clone(),
                                    tag,
                                },
                            ));
                        }
                    }
                    Err(e) => failed.push((at, e.to_string())),
                }
            }
        }
    }
    Ok((out, failed))
}

/// The manifests and blobs one selected version or tag consists of, read through the cache.
async fn resolve(from: &From, sel: Selected, target: &Target) -> Result<Item> {
    match (from, sel) {
        (From::Helm(up), Selected::Helm { chart, version }) => {
            let index = up.index().await?;
            let at = up.locate(&index.value, &chart, &version)?;
            let m = up.manifest(&at).await?;
            let blobs = descriptors(&m.bytes)?.blobs;
            Ok(Item {
                repo: target.repo(&chart),
                source_repo: chart,
                tag: version::tag_for_version(&version),
                artifacts: vec![Artifact {
                    digest: m.digest,
                    media_type: m.media_type,
                    bytes: m.bytes,
                    blobs,
                }],
            })
        }
        (From::Oci(up), Selected::Oci { repo, tag }) => {
            let m = up
                .manifest(&repo, &Reference::Tag(tag.clone()))
                .await?
                .value;
            let d = descriptors(&m.bytes)?;
            let mut artifacts = Vec::new();
            // an index: every child (all platforms), before the index that names them
            for child in d.children {
                let c = up.manifest(&repo, &Reference::Digest(child)).await?.value;
                artifacts.push(Artifact {
                    blobs: descriptors(&c.bytes)?.blobs,
                    digest: c.digest,
                    media_type: c.media_type,
                    bytes: c.bytes,
                });
            }
            artifacts.push(Artifact {
                digest: m.digest,
                media_type: m.media_type,
                bytes: m.bytes,
                blobs: d.blobs,
            });
            Ok(Item {
                repo: target.repo(repo.as_str()),
                source_repo: repo.to_string(),
                tag: tag.to_string(),
                artifacts,
            })
        }
        _ => Err(Error::internal("a selection of the other kind of upstream")),
    }
}

/// What a manifest references: blobs (config, layers, an artifact's blobs, a subject is not
/// pushed) and child manifests (of an index).
struct Descriptors {
    blobs: Vec<(Digest, u64)>,
    children: Vec<Digest>,
}

fn descriptors(manifest: &[u8]) -> Result<Descriptors> {
    #[derive(serde::Deserialize)]
    struct Desc {
        digest: String,
        size: u64,
    }
    #[derive(serde::Deserialize)]
    struct M {
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        blobs: Vec<Desc>,
        #[serde(default)]
        manifests: Vec<Desc>,
    }
    let m: M = serde_json::from_slice(manifest)
        .map_err(|e| Error::upstream_invalid(format!("a manifest is not JSON: {e}")))?;
    let mut blobs = Vec::new();
    for d in m.config.into_iter().chain(m.layers).chain(m.blobs) {
        blobs.push((d.digest.parse()?, d.size));
    }
    let children = m
        .manifests
        .iter()
        .map(|d| d.digest.parse())
        .collect::<Result<Vec<Digest>>>()?;
    Ok(Descriptors { blobs, children })
}

/// Pushes one item: each artifact's blobs, then the artifact by digest; then the tag.
async fn push_item(
    from: &From,
    target: &Target,
    item: &Item,
    dry_run: bool,
    seen: &Seen,
    progress: &Arc<Progress>,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Counts> {
    let mut c = Counts::default();
    let repo = &item.repo;
    for a in &item.artifacts {
        if target.manifest_digest(repo, &a.digest.to_string()).await? == Some(a.digest.clone()) {
            // a manifest is pushed only after its blobs: they are there too
            c.manifests_present += 1;
            continue;
        }
        let mut done: HashSet<&Digest> = HashSet::new();
        for (d, size) in &a.blobs {
            if !done.insert(d) {
                continue;
            }
            let mount_from = seen
                .lock()
                .expect("seen blobs")
                .get(d)
                .filter(|r| *r != repo)
                .cloned();
            if dry_run {
                if target.has_blob(repo, d).await? {
                    c.blobs_present += 1;
                } else {
                    c.blobs_uploaded += 1;
                    c.bytes += size;
                }
                continue;
            }
            let body = blob_body(from, &item.source_repo, d, *size, progress.clone(), bar);
            match target
                .push_blob(repo, d, *size, mount_from.as_deref(), body)
                .await?
            {
                BlobPush::Present => c.blobs_present += 1,
                BlobPush::Mounted => c.blobs_mounted += 1,
                BlobPush::Uploaded => {
                    c.blobs_uploaded += 1;
                    c.bytes += size;
                }
            }
            seen.lock()
                .expect("seen blobs")
                .insert(d.clone(), repo.clone());
        }
        c.manifests_pushed += 1;
        if !dry_run {
            target
                .put_manifest(repo, &a.digest.to_string(), &a.media_type, &a.bytes)
                .await?;
        }
    }
    let top = item.artifacts.last().expect("an item has its manifest");
    push_tag(target, repo, &item.tag, top, dry_run, &mut c).await?;
    Ok(c)
}

/// Points `tag` of `repo` at `top` unless it points there already.
async fn push_tag(
    target: &Target,
    repo: &str,
    tag: &str,
    top: &Artifact,
    dry_run: bool,
    c: &mut Counts,
) -> Result<()> {
    if target.manifest_digest(repo, tag).await? == Some(top.digest.clone()) {
        c.tags_present += 1;
        return Ok(());
    }
    c.tags_pushed += 1;
    if !dry_run {
        target
            .put_manifest(repo, tag, &top.media_type, &top.bytes)
            .await?;
    }
    Ok(())
}

/// The bytes of blob `d` as an upload body: whole from the cache, or streamed from the
/// upstream through the cache's verified tee while it is fetched.
async fn blob_body(
    from: &From,
    source_repo: &str,
    d: &Digest,
    size: u64,
    progress: Arc<Progress>,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<reqwest::Body> {
    let data = match from {
        From::Helm(up) => BlobAnswer::Data(BlobData::Bytes(up.blob(source_repo, d).await?)),
        From::Oci(up) => up.blob(&source_repo.parse()?, d, false, None).await?,
    };
    let chunks: futures::stream::BoxStream<'static, std::io::Result<Bytes>> = match data {
        BlobAnswer::Data(
            BlobData::Bytes(b) | BlobData::Mapped(crate::cache::Mapped { bytes: b, .. }),
        ) => {
            if b.len() as u64 != size {
                return Err(Error::upstream_invalid(format!(
                    "blob {d} is {} bytes, its descriptor says {size}",
                    b.len()
                )));
            }
            futures::stream::once(async move { Ok(b) }).boxed()
        }
        BlobAnswer::Data(BlobData::File(f, _)) => futures::stream::unfold(Some(f), |f| async {
            use tokio::io::AsyncReadExt;
            let mut f = f?;
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed(),
        BlobAnswer::Stream(_, rx) => futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((chunk.map_err(|e| std::io::Error::other(e.to_string())), rx))
        })
        .boxed(),
        BlobAnswer::Head(_) | BlobAnswer::Partial { .. } => {
            return Err(Error::internal("a whole blob was asked for"))
        }
    };
    // counted as the target reads it
    let bar = bar.cloned();
    let counted = chunks.map(move |c| {
        if let Ok(b) = &c {
            progress.bytes(bar.as_ref(), b.len() as u64);
        }
        c
    });
    Ok(reqwest::Body::wrap_stream(counted))
}

/// The floating and `latest` tags of the synced repositories that point at a pushed version:
/// (target repository, tag, the item it points at).
async fn floating<'a>(from: &From, pushed: &'a [Item]) -> Result<Vec<(String, String, &'a Item)>> {
    let mut by_repo: BTreeMap<&str, Vec<&'a Item>> = BTreeMap::new();
    for i in pushed {
        by_repo.entry(i.source_repo.as_str()).or_default().push(i);
    }
    let mut out = Vec::new();
    for (source, items) in by_repo {
        let (all, own): (Vec<String>, HashSet<String>) = match from {
            From::Helm(up) => {
                let index = up.index().await?;
                let all = HelmUpstream::tags(&index.value, source, up.config.float)?;
                let own = index
                    .value
                    .entries()
                    .versions(source)
                    .into_iter()
                    .flatten()
                    .map(|e| version::tag_for_version(e.version))
                    .collect();
                (all.as_ref().clone(), own)
            }
            From::Oci(up) => {
                let repo: RepoName = source.parse()?;
                let all = up.tags(&repo).await?.value;
                let own = up
                    .tags_upstream_only(&repo)
                    .await?
                    .value
                    .iter()
                    .cloned()
                    .collect();
                (all, own)
            }
        };
        for t in all.into_iter().filter(|t| !own.contains(t)) {
            let digest = match from {
                From::Helm(up) => {
                    let index = up.index().await?;
                    let r =
                        HelmUpstream::resolve(&index.value, source, &t.parse()?, up.config.float)?;
                    let tag = version::tag_for_version(&r.version);
                    items
                        .iter()
                        .find(|i| i.tag == tag)
                        .map(|i| i.artifacts.last().expect("a manifest").digest.clone())
                }
                From::Oci(up) => {
                    let m = up
                        .manifest(&source.parse()?, &Reference::Tag(t.parse()?))
                        .await?
                        .value;
                    Some(m.digest)
                }
            };
            let Some(digest) = digest else { continue };
            if let Some(item) = items
                .iter()
                .find(|i| i.artifacts.last().is_some_and(|a| a.digest == digest))
            {
                out.push((item.repo.clone(), t, *item));
            }
        }
    }
    Ok(out)
}
