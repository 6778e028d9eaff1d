//! Reading a bundle back in: staged and verified whole before anything becomes visible.

use super::*;

#[derive(Debug, Default)]
pub struct ImportReport {
    pub manifests: usize,
    /// Blobs the cache did not have.
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs the cache had already.
    pub present: usize,
    pub id: Digest,
    /// Entries of upstreams this configuration does not have (their refs were not written).
    pub skipped: Vec<String>,
}

/// Verifies a bundle whole, then loads it into the cache.
pub async fn import(app: &App, path: &Path) -> Result<ImportReport> {
    let cache = app.cache().clone();
    let staging = app
        .config()
        .cache
        .dir
        .join("tmp")
        .join(format!("import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let result = import_staged(app, &cache, path, &staging).await;
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The blobs of a bundle once staged: digest -> (size, staged path or `None` when the cache
/// holds it already).
type Staged = HashMap<Digest, (u64, Option<PathBuf>)>;

/// What reading a bundle yields: its `oci-layout` and `index.json` bytes and its blobs.
struct BundleRead {
    layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    blobs: Staged,
}

async fn import_staged(
    app: &App,
    cache: &Arc<crate::cache::Cache>,
    path: &Path,
    staging: &Path,
) -> Result<ImportReport> {
    let max_blob = app.config().limits.max_blob_bytes;
    // 1. stage every blob, hashing it; accept only the layout's own files
    let present: BTreeSet<Digest> = cache
        .list_blobs()
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let (p, st) = (path.to_path_buf(), staging.to_path_buf());
    let total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let BundleRead {
        layout,
        index: index_json,
        blobs: staged,
    } = tokio::task::spawn_blocking(move || {
        let bar = bytes_bar(total, "verify");
        let r = stage(&p, &st, &present, max_blob, &bar);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        r
    })
    .await
    .map_err(|e| Error::internal(format!("import task failed: {e}")))??;
    let layout: serde_json::Value =
        serde_json::from_slice(&layout.ok_or_else(|| bad("the bundle has no oci-layout file"))?)
            .map_err(|e| bad(format!("oci-layout is not JSON: {e}")))?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(bad("oci-layout: imageLayoutVersion is not 1.0.0"));
    }
    let index_json = index_json.ok_or_else(|| bad("the bundle has no index.json"))?;
    let index = parse_layout_index(&index_json)?;
    let id = Digest::of(&index_json);

    // 2. every reference present (in the bundle or the cache), the base imported
    let read = |d: &Digest| {
        let staged = staged.get(d).cloned();
        let cache = cache.clone();
        let d = d.clone();
        async move {
            match staged {
                Some((_, Some(p))) => Ok::<_, Error>(Some(Bytes::from(std::fs::read(p)?))),
                _ => cache.cached_bytes(&d).await,
            }
        }
    };
    if let Some(base) = index.annotations.get(A_BASE) {
        let known = cache
            .refs()
            .get(&RefName::new(["bundles", base.as_str()]))
            .await?
            .is_some();
        if !known {
            return Err(bad(format!(
                "this bundle extends {base}, which was not imported here: import that bundle first"
            )));
        }
    }
    let size = |d: &Digest| {
        let staged = staged.get(d).map(|(n, _)| *n);
        let cache = cache.clone();
        let d = d.clone();
        async move {
            match staged {
                Some(n) => Ok::<_, Error>(Some(n)),
                None => cache.blob_size(&d).await,
            }
        }
    };
    let mut manifests: HashMap<Digest, Bytes> = HashMap::new();
    for e in &index.manifests {
        let d: Digest = e
            .digest
            .parse()
            .map_err(|_| bad(format!("index.json names {:?}, not a digest", e.digest)))?;
        check_tree(&d, e.size, &e.media_type, &read, &size, &mut manifests, 0).await?;
    }

    // 3. the bytes fit
    let needed: u64 = staged
        .values()
        .filter(|(_, p)| p.is_some())
        .map(|(n, _)| n)
        .sum();
    let (used, max) = cache.blob_usage();
    let available = max.saturating_sub(used);
    if needed > available {
        return Err(bad(format!(
            "the bundle needs {needed} bytes in the cache and {available} are available \
             (cache.max_disk_bytes {max}, {used} used): refused rather than evict what it brings"
        )));
    }

    // 4. blobs into the store, then refs
    let mut report = ImportReport {
        manifests: index.manifests.len(),
        id: id.clone(),
        ..Default::default()
    };
    for (d, (n, p)) in &staged {
        match p {
            Some(p) => {
                cache.import_blob(d, p).await?;
                report.blobs += 1;
                report.bytes += n;
            }
            None => report.present += 1,
        }
    }
    install_refs(app, &index.manifests, &manifests, &mut report).await?;
    cache
        .refs()
        .put(&RefName::new(["bundles", &id.to_string()]), Bytes::new())
        .await?;
    Ok(report)
}

/// Checks a manifest and what it references, recursively: present, of the right size, and
/// (for image manifests) complete. An index may leave out some of its children.
async fn check_tree<F, Fut, S, SFut>(
    d: &Digest,
    size: u64,
    media_type: &str,
    read: &F,
    size_of: &S,
    manifests: &mut HashMap<Digest, Bytes>,
    depth: usize,
) -> Result<()>
where
    F: Fn(&Digest) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Bytes>>>,
    S: Fn(&Digest) -> SFut,
    SFut: std::future::Future<Output = Result<Option<u64>>>,
{
    if depth > 8 {
        return Err(bad(format!("{d}: manifests nested too deep")));
    }
    let bytes = read(d).await?.ok_or_else(|| {
        bad(format!(
            "{d} is named but neither in the bundle nor in the cache"
        ))
    })?;
    if bytes.len() as u64 != size {
        return Err(bad(format!(
            "{d} is {} bytes, its descriptor says {size}",
            bytes.len()
        )));
    }
    #[derive(Deserialize)]
    struct Any {
        manifests: Option<Vec<Descriptor>>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        blobs: Vec<Descriptor>,
    }
    let m: Any = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{d} ({media_type}) is not a manifest: {e}")))?;
    manifests.insert(d.clone(), bytes.clone());
    if let Some(children) = m.manifests {
        for c in children {
            let cd: Digest = c
                .digest
                .parse()
                .map_err(|_| bad(format!("{d} names {:?}, not a digest", c.digest)))?;
            if size_of(&cd).await?.is_some() {
                Box::pin(check_tree(
                    &cd,
                    c.size,
                    &c.media_type,
                    read,
                    size_of,
                    manifests,
                    depth + 1,
                ))
                .await?;
            }
        }
        return Ok(());
    }
    for r in m.config.into_iter().chain(m.layers).chain(m.blobs) {
        let rd: Digest = r
            .digest
            .parse()
            .map_err(|_| bad(format!("{d} names {:?}, not a digest", r.digest)))?;
        let n = size_of(&rd).await?.ok_or_else(|| {
            bad(format!(
                "{d} names {rd}, which is neither in the bundle nor in the cache"
            ))
        })?;
        if n != r.size {
            return Err(bad(format!("{rd} is {n} bytes, {d} says {}", r.size)));
        }
    }
    Ok(())
}

/// Writes the refs an imported bundle implies: helm indexes first, then charts (which need
/// their index), then tags, tag lists and links.
async fn install_refs(
    app: &App,
    entries: &[Descriptor],
    manifests: &HashMap<Digest, Bytes>,
    report: &mut ImportReport,
) -> Result<()> {
    let cache = app.cache();
    let kind = |e: &Descriptor| e.annotations.get(A_KIND).cloned().unwrap_or_default();
    let mut contents = HashMap::new();
    for e in entries.iter().filter(|e| kind(e) == KIND_INDEX) {
        let up = e.annotations.get(A_UPSTREAM).cloned().unwrap_or_default();
        let Some(Source::Helm(h)) = app.source(&up) else {
            report.skipped.push(format!("index of {up}"));
            continue;
        };
        let d: Digest = e.digest.parse()?;
        let m = &manifests[&d];
        let layer = serde_json::from_slice::<serde_json::Value>(m)
            .ok()
            .and_then(|v| v["layers"][0]["digest"].as_str().map(str::to_string))
            .ok_or_else(|| bad(format!("{d}: an index artifact without its layer")))?;
        let raw = cache
            .cached_bytes(&layer.parse()?)
            .await?
            .ok_or_else(|| bad(format!("{layer} is missing")))?;
        contents.insert(up, h.install_index(raw).await?);
    }
    let mut oci_tags: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in entries {
        let a = &e.annotations;
        let (up, repo) = (
            a.get(A_UPSTREAM).cloned().unwrap_or_default(),
            a.get(A_REPO).cloned().unwrap_or_default(),
        );
        let d: Digest = e.digest.parse()?;
        let bytes = manifests[&d].clone();
        match (kind(e).as_str(), app.source(&up)) {
            (KIND_INDEX, _) => {}
            (KIND_CHART, Some(Source::Helm(h))) => {
                let version = a.get(A_VERSION).cloned().unwrap_or_default();
                let Some(content) = contents.get(&up) else {
                    return Err(bad(format!(
                        "{up}/{repo} {version}: the bundle carries no index of {up}"
                    )));
                };
                h.install_chart(
                    content,
                    &repo,
                    &version,
                    &ServedManifest {
                        bytes,
                        digest: d,
                        media_type: e.media_type.clone(),
                    },
                )
                .await?;
            }
            (KIND_OCI, Some(Source::Oci(o))) => {
                let tag = a.get(A_TAG).cloned().unwrap_or_default();
                let synthesized = a.get(A_SYNTH).is_some_and(|v| v == "true");
                install_oci_tree(
                    &o,
                    &repo,
                    (!synthesized).then_some(tag.as_str()),
                    &d,
                    manifests,
                    &e.media_type,
                )
                .await?;
                if !synthesized {
                    oci_tags.entry((up, repo)).or_default().push(tag);
                }
            }
            _ => report
                .skipped
                .push(a.get(REF_NAME).cloned().unwrap_or_else(|| e.digest.clone())),
        }
    }
    for ((up, repo), mut tags) in oci_tags {
        if let Some(Source::Oci(o)) = app.source(&up) {
            tags.sort();
            tags.dedup();
            o.install_tags(&repo, &tags).await;
        }
    }
    Ok(())
}

/// A manifest (and its child manifests) of an OCI upstream: media types, tag, links.
async fn install_oci_tree(
    o: &Arc<crate::resolver::OciUpstream>,
    repo: &str,
    tag: Option<&str>,
    d: &Digest,
    manifests: &HashMap<Digest, Bytes>,
    media_type: &str,
) -> Result<()> {
    let bytes = manifests[d].clone();
    o.install_tag(repo, tag, d, bytes.clone(), media_type)
        .await?;
    #[derive(Deserialize)]
    struct Any {
        manifests: Option<Vec<Descriptor>>,
    }
    if let Ok(Any {
        manifests: Some(children),
    }) = serde_json::from_slice::<Any>(&bytes)
    {
        for c in children {
            let Ok(cd) = c.digest.parse::<Digest>() else {
                continue;
            };
            if manifests.contains_key(&cd) {
                Box::pin(install_oci_tree(
                    o,
                    repo,
                    None,
                    &cd,
                    manifests,
                    &c.media_type,
                ))
                .await?;
            }
        }
    }
    Ok(())
}

/// Reads a bundle (tar or directory), accepting only the layout's own files, hashing every
/// blob and staging those the cache lacks. Returns `oci-layout`, `index.json` and the blobs.
fn stage(
    path: &Path,
    staging: &Path,
    present: &BTreeSet<Digest>,
    max_blob: u64,
    bar: &Option<indicatif::ProgressBar>,
) -> Result<BundleRead> {
    let mut layout = None;
    let mut index = None;
    let mut staged: Staged = HashMap::new();
    let mut take = |name: &str, size: u64, reader: &mut dyn Read| -> Result<()> {
        match name {
            "oci-layout" | "index.json" => {
                if size > MAX_SMALL {
                    return Err(bad(format!("{name} is {size} bytes: too big")));
                }
                let mut v = Vec::new();
                reader.take(MAX_SMALL).read_to_end(&mut v)?;
                let slot = if name == "index.json" {
                    &mut index
                } else {
                    &mut layout
                };
                if slot.replace(v).is_some() {
                    return Err(bad(format!("{name} appears twice")));
                }
                Ok(())
            }
            _ => {
                let hex = name
                    .strip_prefix("blobs/sha256/")
                    .ok_or_else(|| bad(format!("unexpected path {name:?} in the bundle")))?;
                let d = Digest::from_hex(hex)
                    .map_err(|_| bad(format!("unexpected path {name:?} in the bundle")))?;
                if size > max_blob {
                    return Err(bad(format!(
                        "{name} is {size} bytes, over limits.max_blob_bytes"
                    )));
                }
                if staged.contains_key(&d) {
                    return Err(bad(format!("{name} appears twice")));
                }
                let keep = !present.contains(&d);
                let dest = staging.join(hex);
                let mut out = if keep {
                    Some(std::io::BufWriter::with_capacity(
                        1 << 20,
                        std::fs::File::create(&dest)?,
                    ))
                } else {
                    None
                };
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                loop {
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    if got > size {
                        return Err(bad(format!("{name} is longer than its header says")));
                    }
                    hasher.update(&buf[..n]);
                    if let Some(o) = &mut out {
                        o.write_all(&buf[..n])?;
                    }
                    if let Some(b) = bar {
                        b.inc(n as u64);
                    }
                }
                if got != size {
                    return Err(bad(format!("{name} is cut short: {got} of {size} bytes")));
                }
                let actual = Digest::from_hasher(hasher);
                if actual != d {
                    return Err(bad(format!(
                        "{name} does not hash to its name (it hashes to {actual}): the bundle is damaged"
                    )));
                }
                if let Some(mut o) = out {
                    o.flush()?;
                }
                staged.insert(d, (size, keep.then_some(dest)));
                Ok(())
            }
        }
    };
    if path.is_dir() {
        for entry in walk(path)? {
            let (rel, meta) = entry;
            let name = rel.to_string_lossy().replace('\\', "/");
            if meta.is_dir() {
                if !["blobs", "blobs/sha256"].contains(&name.as_str()) {
                    return Err(bad(format!("unexpected directory {name:?} in the bundle")));
                }
                continue;
            }
            if !meta.is_file() {
                return Err(bad(format!("{name:?} is not a regular file")));
            }
            let mut f = std::fs::File::open(path.join(&rel))?;
            take(&name, meta.len(), &mut f)?;
        }
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
        ends_like_a_tar(&f, path)?;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("{} is not a tar: {e}", path.display())))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("the tar is damaged: {e}")))?;
            let kind = entry.header().entry_type();
            let raw = entry
                .path()
                .map_err(|e| bad(format!("a tar path is not valid: {e}")))?
                .into_owned();
            let name = safe_name(&raw)?;
            match kind {
                tar::EntryType::Directory => {
                    if !["blobs", "blobs/sha256"].contains(&name.as_str()) {
                        return Err(bad(format!("unexpected directory {name:?} in the bundle")));
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.header().size()?;
                    take(&name, size, &mut entry).map_err(|e| match e.kind() {
                        Kind::Internal => bad(format!("the tar is damaged at {name}: {e}")),
                        _ => e,
                    })?;
                }
                other => {
                    return Err(bad(format!(
                        "{name:?} is a {other:?} entry: a bundle holds regular files only"
                    )))
                }
            }
        }
    }
    Ok(BundleRead {
        layout,
        index,
        blobs: staged,
    })
}

/// A tar ends with two zero blocks; one cut short (a copy that did not finish) does not, even
/// when it happens to end between entries, which the tar reader would take for the end.
fn ends_like_a_tar(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut tail = [0u8; 1024];
    if len < 1024 || len % 512 != 0 {
        return Err(bad(format!(
            "{} is not a whole tar ({len} bytes): truncated?",
            path.display()
        )));
    }
    f.read_exact_at(&mut tail, len - 1024)?;
    if tail.iter().any(|b| *b != 0) {
        return Err(bad(format!(
            "{} has no end-of-archive marker: the tar is truncated",
            path.display()
        )));
    }
    Ok(())
}

/// A tar path as the layout's relative name, refusing absolute paths and `..`.
fn safe_name(p: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| bad(format!("{p:?} is not UTF-8")))?
                    .to_string(),
            ),
            std::path::Component::CurDir => {}
            _ => return Err(bad(format!("{p:?} leaves the bundle"))),
        }
    }
    Ok(parts.join("/"))
}

/// Every file and directory under `root` (relative paths, symlinks not followed).
fn walk(root: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                stack.push(r.clone());
            }
            out.push((r, meta));
        }
    }
    Ok(out)
}
