//! One version's page (README, values, dependencies, images) and the fetch-into-cache action.

use std::sync::Arc;

use bytes::Bytes;
use maud::{html, Markup, PreEscaped};

use super::chart::{snippets, unknown};
use super::*;
use crate::config::UpstreamKind;
use crate::convert::chart::{read_chart_docs, read_chart_metadata, ArchiveLimits, ChartMetadata};
use crate::error::{Error, Kind, Result};
use crate::http::Response;
use crate::ids::{Digest, Reference, RepoName, Tag};
use crate::resolver::{HelmUpstream, OciUpstream, Source};

/// What a version page shows, from the cache.
#[derive(Default)]
struct VersionView {
    archive: Option<Bytes>,
    manifest_digest: Option<Digest>,
    provenance: Option<String>,
    meta: Option<ChartMetadata>,
}

/// `?version=`: README, values, dependencies, maintainers, images, digest; or the fetch
/// button when the archive is not cached.
pub(super) async fn version_page(
    site: &Site<'_>,
    src: &Source,
    chart: &str,
    v: &str,
) -> Result<Response> {
    let name = src.config().name.to_string();
    let mut view = VersionView::default();
    match src {
        Source::Helm(h) => {
            let content = h.peek_index().await.content.ok_or_else(|| unknown(chart))?;
            let at = h.locate(&content, chart, v)?;
            view.archive = h.cached_archive(&at).await;
            if h.manifest_known(&at).await {
                view.manifest_digest = h.manifest(&at).await.ok().map(|m| m.digest);
            }
            view.provenance = Some(format!(
                "/{}/-/{}/{}/{}-{}.tgz.prov",
                enc(&name),
                enc(chart),
                enc(v),
                enc(chart),
                enc(v)
            ));
        }
        Source::Oci(o) => {
            let repo: RepoName = chart.parse().map_err(|_| unknown(chart))?;
            if let Some(d) = o.peek_tag(&repo, v).await {
                if let Some((bytes, _)) = site.cache.cached_manifest(&d).await? {
                    if let Some(layers) = crate::convert::manifest::chart_layers(&bytes) {
                        view.archive = site.cache.cached_bytes(&layers.chart).await?;
                        if layers.prov.is_some() {
                            view.provenance = Some("a provenance layer is attached".into());
                        }
                    }
                }
                view.manifest_digest = Some(d);
            }
        }
    }
    let docs = match &view.archive {
        Some(a) => {
            let a = a.clone();
            let (meta, docs) = tokio::task::spawn_blocking(move || {
                let limits = ArchiveLimits::default();
                (
                    read_chart_metadata(&a, limits).ok(),
                    read_chart_docs(&a, limits, MAX_DOC).ok(),
                )
            })
            .await
            .map_err(|e| Error::internal(format!("archive read failed: {e}")))?;
            view.meta = meta;
            docs
        }
        None => None,
    };
    let readme = match docs.as_ref().and_then(|d| d.readme.clone()) {
        Some((md, _)) => Some(
            tokio::task::spawn_blocking(move || crate::convert::markdown::render_readme(&md))
                .await
                .map_err(|e| Error::internal(format!("README render failed: {e}")))?,
        ),
        None => None,
    };
    let values = docs.as_ref().and_then(|d| d.values.clone());
    let images = view
        .meta
        .as_ref()
        .and_then(|m| m.annotations.get("artifacthub.io/images"))
        .and_then(|a| crate::airgap::list::chart_images(a).ok())
        .unwrap_or_default();
    let fetch_action = format!("{}/fetch?version={}", chart_href(&name, chart), enc(v));
    let body = html! {
        h1 { (chart) " " (v) }
        @if let Some(m) = &view.meta {
            p class="lead" { (m.description) }
            dl {
                @if !m.app_version.is_empty() { dt { "App version" } dd { (m.app_version) } }
                @if !m.home.is_empty() { dt { "Home" } dd { (m.home) } }
                @if let Some(d) = &view.manifest_digest { dt { "OCI manifest" } dd { code { (d) } } }
                @if let Some(p) = &view.provenance {
                    dt { "Provenance" }
                    dd { @if p.starts_with('/') { a href=(p) { "the .prov file" } " (when the upstream has one)" } @else { (p) } }
                }
            }
            @if !m.maintainers.is_empty() {
                h2 { "Maintainers" }
                ul { @for mt in &m.maintainers { li { (mt.name) @if !mt.email.is_empty() { " <" (mt.email) ">" } } } }
            }
            @if !m.dependencies.is_empty() {
                h2 { "Dependencies" }
                table {
                    thead { tr { th { "Name" } th { "Version" } th { "Repository" } th { "Resolves here" } } }
                    tbody {
                        @for d in &m.dependencies {
                            tr {
                                td { (d.name) }
                                td { (d.version) }
                                td { code { (d.repository) } }
                                td { (resolves_here(&site.upstreams, &d.repository, &d.name)) }
                            }
                        }
                    }
                }
            }
            @if !images.is_empty() {
                h2 { "Images (artifacthub.io/images)" }
                ul { @for i in &images { li { code { (i) } } } }
            }
        } @else {
            @if let Some(d) = &view.manifest_digest { p { "OCI manifest " code { (d) } } }
            p { "This version is not cached here yet." }
            form method="post" action=(fetch_action) {
                button type="submit" { "Fetch into cache" }
            }
        }
        @if let Some(r) = &readme {
            section class="readme" { h2 { "README" } (PreEscaped(r)) }
        }
        @if let Some((text, cut)) = &values {
            details {
                summary { "values.yaml" @if *cut { " (first MiB)" } }
                pre class="values" { code { (text) } }
            }
        }
        (snippets(site.req, src, chart, v))
    };
    Ok(layout(
        site.req,
        &format!("{chart} {v}"),
        &[
            (format!("/-/u/{}", enc(&name)), name.clone()),
            (chart_href(&name, chart), chart.to_string()),
            (version_href(&name, chart, v), v.to_string()),
        ],
        body,
    ))
}

/// Where a dependency's repository resolves on this mirror: an upstream whose URL it names.
fn resolves_here(upstreams: &[&Source], repository: &str, dep: &str) -> Markup {
    let r = repository.trim_end_matches('/');
    for s in upstreams {
        let c = s.config();
        let url = c.url.as_str().trim_end_matches('/');
        let hit = match c.kind {
            UpstreamKind::Helm => r == url,
            UpstreamKind::Oci => r
                .strip_prefix("oci://")
                .is_some_and(|rest| rest.split('/').next() == Some(c.host_port().as_str())),
        };
        if hit {
            let chart = match c.kind {
                UpstreamKind::Helm => dep.to_string(),
                UpstreamKind::Oci => {
                    let rest = r.strip_prefix("oci://").unwrap_or(r);
                    let path = rest.split_once('/').map(|x| x.1).unwrap_or("");
                    if path.is_empty() {
                        dep.to_string()
                    } else {
                        format!("{path}/{dep}")
                    }
                }
            };
            return html! { a href=(chart_href(c.name.as_str(), &chart)) { (c.name) } };
        }
    }
    html! { "no upstream here" }
}

/// `POST .../fetch?version=`: fetches one version into the cache (only from this origin),
/// then shows its page.
pub async fn fetch(site: &Site<'_>, src: &Source, chart: &str, v: &str) -> Result<Response> {
    let (_, host) = origin(site.req);
    let p = site.req.page.as_deref();
    // the host the browser says it posts from is the one it reached (the scheme may differ
    // behind a proxy that terminates TLS)
    let same_origin = match p.and_then(|p| p.origin.as_deref()) {
        Some(o) => o
            .split_once("://")
            .is_some_and(|(scheme, h)| (scheme == "http" || scheme == "https") && h == host),
        None => p
            .and_then(|p| p.sec_fetch_site.as_deref())
            .is_some_and(|s| s == "same-origin"),
    };
    if !same_origin {
        return Err(Error::new(
            Kind::Forbidden,
            "fetching into the cache is only allowed from this mirror's own page",
        ));
    }
    match src {
        Source::Helm(h) => fetch_helm(h, chart, v).await?,
        Source::Oci(o) => fetch_oci(o, chart, v).await?,
    }
    let name = src.config().name.to_string();
    Ok(Response::new(303)
        .header("Location", version_href(&name, chart, v))
        .with_body("text/plain", Bytes::from_static(b"fetched\n"), false))
}

async fn fetch_helm(h: &Arc<HelmUpstream>, chart: &str, v: &str) -> Result<()> {
    let index = h.index().await?;
    let at = h.locate(&index.value, chart, v)?;
    h.manifest(&at).await?;
    h.archive(&at).await?;
    Ok(())
}

async fn fetch_oci(o: &Arc<OciUpstream>, chart: &str, v: &str) -> Result<()> {
    let repo: RepoName = chart.parse()?;
    let tag: Tag = v.parse()?;
    let m = o.manifest(&repo, &Reference::Tag(tag)).await?.value;
    let layers = crate::convert::manifest::chart_layers(&m.bytes)
        .ok_or_else(|| Error::new(Kind::NotFound, format!("{chart}:{v} is not a Helm chart")))?;
    for d in [Some(layers.config), Some(layers.chart), layers.prov]
        .into_iter()
        .flatten()
    {
        if let crate::resolver::oci::BlobAnswer::Stream(_, mut rx)
        | crate::resolver::oci::BlobAnswer::Partial { mut rx, .. } =
            o.blob(&repo, &d, false, None).await?
        {
            while let Some(chunk) = rx.recv().await {
                chunk?;
            }
            o.settled(&repo, &d).await?;
        }
    }
    Ok(())
}
