//! Writing a bundle: the cache's manifests and blobs, chosen by the export options, as an OCI
//! image layout (directory or tar), leaving out what a base bundle holds.

use super::*;

fn wanted(filter: &[String], upstream: &str, name: &str) -> bool {
    filter.is_empty()
        || filter
            .iter()
            .any(|f| f == name || *f == format!("{upstream}/{name}"))
}

/// Writes the cache (or the part the options select) as an OCI image layout.
pub async fn export(app: &App, opts: &ExportOptions) -> Result<ExportReport> {
    let cache = app.cache();
    let mut plan = Plan {
        entries: Vec::new(),
        blobs: BTreeMap::new(),
    };
    let filtered = !opts.charts.is_empty() || !opts.images.is_empty();
    for src in app.sources() {
        let up = src.config().name.as_str().to_string();
        if !opts.upstreams.is_empty() && !opts.upstreams.contains(&up) {
            continue;
        }
        match &src {
            Source::Oci(o) => {
                let mut by_repo: BTreeMap<String, Vec<(String, Digest)>> = BTreeMap::new();
                for (repo, tag, d) in o.resolved_tags().await? {
                    by_repo.entry(repo).or_default().push((tag, d));
                }
                for (repo, tags) in by_repo {
                    let mut exported: Vec<(String, Digest)> = Vec::new();
                    for (tag, d) in tags {
                        let Some((bytes, mt)) = cache.cached_manifest(&d).await? else {
                            continue;
                        };
                        let is_chart = chart_layers(&bytes).is_some();
                        let selected = !filtered
                            || (is_chart && wanted(&opts.charts, &up, &repo))
                            || (!is_chart && wanted(&opts.images, &up, &repo));
                        if !selected {
                            continue;
                        }
                        if !closure(cache, &d, &bytes, &mut plan).await? {
                            tracing::warn!(upstream = %up, repo, tag, "incomplete in the cache; left out");
                            continue;
                        }
                        let mut a = BTreeMap::new();
                        a.insert(REF_NAME.into(), format!("{up}/{repo}:{tag}"));
                        a.insert(A_UPSTREAM.into(), up.clone());
                        a.insert(A_REPO.into(), repo.clone());
                        a.insert(A_TAG.into(), tag.clone());
                        a.insert(A_KIND.into(), KIND_OCI.into());
                        plan.entries.push(Descriptor {
                            media_type: mt,
                            digest: d.to_string(),
                            size: bytes.len() as u64,
                            annotations: a,
                        });
                        exported.push((tag, d));
                    }
                    // the `latest` this upstream synthesises from what the bundle carries
                    let tags: Vec<String> = exported.iter().map(|(t, _)| t.clone()).collect();
                    if let Some(target) = o.synthesized_latest(&tags) {
                        let (_, d) = exported
                            .iter()
                            .find(|(t, _)| *t == target)
                            .expect("the target is one of the tags");
                        let first = plan
                            .entries
                            .iter()
                            .find(|e| e.digest == d.to_string())
                            .expect("exported above")
                            .clone();
                        let mut a = first.annotations.clone();
                        a.insert(REF_NAME.into(), format!("{up}/{repo}:latest"));
                        a.insert(A_TAG.into(), version::LATEST.into());
                        a.insert(A_SYNTH.into(), "true".into());
                        plan.entries.push(Descriptor {
                            annotations: a,
                            ..first
                        });
                    }
                }
            }
            Source::Helm(h) => {
                let mut keep = BTreeSet::new();
                for (chart, ver, d) in h.built_manifests().await? {
                    if filtered && !wanted(&opts.charts, &up, &chart) {
                        continue;
                    }
                    let Some(bytes) = cache.cached_bytes(&d).await? else {
                        continue;
                    };
                    if !closure(cache, &d, &bytes, &mut plan).await? {
                        tracing::warn!(upstream = %up, chart, version = ver, "incomplete in the cache; left out");
                        continue;
                    }
                    let tag = version::tag_for_version(&ver);
                    let mut a = BTreeMap::new();
                    a.insert(REF_NAME.into(), format!("{up}/{chart}:{tag}"));
                    a.insert(A_UPSTREAM.into(), up.clone());
                    a.insert(A_REPO.into(), chart.clone());
                    a.insert(A_TAG.into(), tag);
                    a.insert(A_VERSION.into(), ver.clone());
                    a.insert(A_KIND.into(), KIND_CHART.into());
                    plan.entries.push(Descriptor {
                        media_type: OCI_MANIFEST.into(),
                        digest: d.to_string(),
                        size: bytes.len() as u64,
                        annotations: a,
                    });
                    keep.insert((chart, ver));
                }
                if keep.is_empty() {
                    continue;
                }
                // the upstream's index, cut down to what the bundle carries
                let index = Bytes::from(h.index_for_export(&keep).await?);
                let config = Bytes::from(
                    serde_json::to_vec(&serde_json::json!({
                        "upstream": up,
                        "url": h.config.url.as_str(),
                    }))
                    .expect("JSON"),
                );
                let (cd, cn) = plan.add_built(config);
                let (ld, ln) = plan.add_built(index);
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "artifactType": HELM_INDEX_ARTIFACT,
                    "config": {"mediaType": HELM_INDEX_CONFIG, "digest": cd.to_string(), "size": cn},
                    "layers": [{"mediaType": HELM_INDEX_LAYER, "digest": ld.to_string(), "size": ln}],
                });
                let (md, mn) = plan.add_built(Bytes::from(manifest.to_string()));
                let mut a = BTreeMap::new();
                a.insert(REF_NAME.into(), format!("chartbridge/index/{up}"));
                a.insert(A_UPSTREAM.into(), up.clone());
                a.insert(A_KIND.into(), KIND_INDEX.into());
                plan.entries.push(Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: md.to_string(),
                    size: mn,
                    annotations: a,
                });
            }
        }
    }
    plan.entries.sort_by(|a, b| {
        a.annotations
            .get(REF_NAME)
            .cmp(&b.annotations.get(REF_NAME))
    });
    let mut annotations = BTreeMap::new();
    let mut skip = BTreeSet::new();
    if let Some(old) = &opts.since {
        let base = Bundle::open(old)?;
        annotations.insert(A_BASE.into(), base.id.to_string());
        skip = base.blob_names;
    }
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: plan.entries.clone(),
        annotations,
    };
    let index_json = serde_json::to_vec(&index).expect("JSON");
    let id = Digest::of(&index_json);
    let mut report = ExportReport {
        manifests: plan.entries.len(),
        id,
        ..Default::default()
    };
    let mut files: Vec<(Digest, u64, Payload)> = Vec::new();
    for (d, (n, p)) in plan.blobs {
        if skip.contains(&d) {
            report.skipped += 1;
        } else {
            report.blobs += 1;
            report.bytes += n;
            files.push((d, n, p));
        }
    }
    write_layout(cache, &opts.out, &index_json, files).await?;
    Ok(report)
}

/// Adds a manifest and everything it references to the plan; false when something an image
/// manifest needs is missing (an index keeps only its complete children: a mirror of some
/// platforms is a valid bundle).
async fn closure(
    cache: &Arc<crate::cache::Cache>,
    d: &Digest,
    bytes: &[u8],
    plan: &mut Plan,
) -> Result<bool> {
    #[derive(Deserialize)]
    struct Any {
        manifests: Option<Vec<Descriptor>>,
    }
    let parsed: Any = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("a cached manifest is not JSON: {e}")))?;
    if let Some(children) = parsed.manifests {
        let mut any = false;
        for c in children {
            let Ok(cd) = c.digest.parse::<Digest>() else {
                continue;
            };
            let Some(child) = cache.cached_bytes(&cd).await? else {
                continue;
            };
            if Box::pin(closure(cache, &cd, &child, plan)).await? {
                any = true;
            }
        }
        if any {
            plan.add_cached(d, bytes.len() as u64);
        }
        return Ok(any);
    }
    let mut sizes = Vec::new();
    for r in crate::cache::referenced(bytes) {
        match cache.read_blob(&r).await? {
            Some(data) => sizes.push((r, data.len())),
            None => return Ok(false),
        }
    }
    for (r, n) in sizes {
        plan.add_cached(&r, n);
    }
    plan.add_cached(d, bytes.len() as u64);
    Ok(true)
}

/// Writes the layout: a tar (written to a temp file, then renamed) or a directory.
async fn write_layout(
    cache: &Arc<crate::cache::Cache>,
    out: &Path,
    index_json: &[u8],
    files: Vec<(Digest, u64, Payload)>,
) -> Result<()> {
    let total: u64 = files.iter().map(|(_, n, _)| n).sum();
    let progress = bytes_bar(total, "export");
    // Blobs are opened here, a few ahead of the writer (the cache reads are async), and copied
    // on a blocking thread: one open file and one buffer at a time, whatever the cache's size.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Digest, u64, Source_)>>(4);
    let cache = cache.clone();
    tokio::spawn(async move {
        for (d, n, p) in files {
            let s = match p {
                Payload::Built(b) => Ok(Source_::Bytes(b)),
                Payload::Cached(d) => match cache.read_blob(&d).await {
                    Ok(Some(BlobData::File(f, _))) => Ok(Source_::File(f.into_std().await)),
                    Ok(Some(BlobData::Bytes(b))) => Ok(Source_::Bytes(b)),
                    Ok(Some(BlobData::Mapped(m))) => Ok(Source_::Bytes(m.bytes)),
                    Ok(None) => Err(Error::internal(format!(
                        "{d} left the cache while it was exported"
                    ))),
                    Err(e) => Err(e),
                },
            };
            if tx.send(s.map(|s| (d, n, s))).await.is_err() {
                return;
            }
        }
    });
    let mut sources = std::iter::from_fn(move || rx.blocking_recv());
    let (out, index_json) = (out.to_path_buf(), index_json.to_vec());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let tar = out.extension().is_some_and(|e| e == "tar");
        if tar {
            let tmp = out.with_extension("tar.part");
            let result = (|| -> std::io::Result<()> {
                let f = std::fs::File::create(&tmp)?;
                let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
                append(
                    &mut b,
                    "oci-layout",
                    br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
                    30,
                )?;
                append(
                    &mut b,
                    "index.json",
                    index_json.as_slice(),
                    index_json.len() as u64,
                )?;
                for item in sources.by_ref() {
                    let (d, n, s) = item.map_err(std::io::Error::other)?;
                    let path = format!("blobs/sha256/{}", d.hex());
                    let reader = Counting::new(s, &progress);
                    append(&mut b, &path, reader, n)?;
                }
                let w = b.into_inner()?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_file(&tmp);
                return Err(
                    Error::internal(format!("writing {}: {e}", out.display())).with_source(e)
                );
            }
            std::fs::rename(&tmp, &out)?;
        } else {
            std::fs::create_dir_all(out.join("blobs/sha256"))?;
            for item in sources.by_ref() {
                let (d, _, s) = item?;
                let path = out.join("blobs/sha256").join(d.hex());
                let mut w = std::fs::File::create(&path)?;
                std::io::copy(&mut Counting::new(s, &progress), &mut w)?;
            }
            std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            std::fs::write(out.join("index.json"), &index_json)?;
        }
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::internal(format!("export task failed: {e}")))?
}

enum Source_ {
    File(std::fs::File),
    Bytes(Bytes),
}

/// A reader that moves the progress bar.
struct Counting<'a> {
    inner: Box<dyn Read + 'a>,
    bar: &'a Option<indicatif::ProgressBar>,
}

impl<'a> Counting<'a> {
    fn new(s: Source_, bar: &'a Option<indicatif::ProgressBar>) -> Counting<'a> {
        let inner: Box<dyn Read> = match s {
            Source_::File(f) => Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            Source_::Bytes(b) => Box::new(std::io::Cursor::new(b)),
        };
        Counting { inner, bar }
    }
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

/// A tar entry with fixed metadata, so the same cache always gives the same bundle bytes.
fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    data: impl Read,
    size: u64,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, path, data)
}
