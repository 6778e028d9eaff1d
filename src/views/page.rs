//! The catalog page for people: what the mirror holds, each chart's README and values, and how
//! to pull it. Server-rendered HTML (maud escapes every value it writes), one stylesheet, no
//! script. It reads only what is in memory or on disk (`peek_*`, `known_value`, cached blobs):
//! looking never makes an upstream request; the one action that does is the explicit "fetch
//! into cache" POST, which must come from this origin. Chart text is untrusted: READMEs go
//! through `convert::markdown` (rendered, then sanitised), everything else is escaped, and
//! every answer carries a strict Content-Security-Policy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::cache::Cache;
use crate::config::UpstreamKind;
use crate::convert::chart::{read_chart_docs, read_chart_metadata, ArchiveLimits, ChartMetadata};
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::http::{Request, Response};
use crate::ids::{Digest, Reference, RepoName, Tag};
use crate::resolver::{HelmUpstream, OciUpstream, Source};

/// Rows per page of an upstream's charts and of a chart's versions.
const PAGE_ROWS: usize = 50;
/// Search results shown.
const MAX_RESULTS: usize = 100;
/// Most bytes of README.md and values.yaml read from an archive.
const MAX_DOC: u64 = 1 << 20;

const STYLE: &str = include_str!("page.css");

/// What every page needs: the upstreams this request may see (configuration order) and the
/// cache.
pub struct Site<'a> {
    pub upstreams: Vec<&'a Source>,
    pub cache: &'a Arc<Cache>,
    pub req: &'a Request,
}

/// The headers every page answer carries (errors too): nothing from a chart can run, be
/// framed or sniffed into something else.
pub fn harden(mut resp: Response) -> Response {
    for (k, v) in [
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("X-Frame-Options", "DENY"),
    ] {
        resp.headers.push((k, v.to_string()));
    }
    resp
}

/// Whether a request for `/` asks for a page (a browser's `Accept`).
pub fn wants_html(req: &Request) -> bool {
    req.page
        .as_ref()
        .and_then(|p| p.accept.as_deref())
        .is_some_and(|a| a.contains("text/html"))
}

fn page(req: &Request, markup: Markup) -> Response {
    Response::new(200)
        .header("Cache-Control", "no-store")
        .with_body(
            "text/html; charset=utf-8",
            Bytes::from(markup.into_string()),
            req.is_head(),
        )
}

pub fn style(req: &Request) -> Response {
    Response::new(200)
        .header("Cache-Control", "max-age=300")
        .with_body(
            "text/css; charset=utf-8",
            Bytes::from_static(STYLE.as_bytes()),
            req.is_head(),
        )
}

/// `scheme://host` as the browser reached this mirror, and the bare host.
fn origin(req: &Request) -> (String, String) {
    let p = req.page.as_deref();
    let host = p
        .and_then(|p| p.host.as_deref())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        })
        .unwrap_or("chartbridge.example:5000")
        .to_string();
    let scheme = if p.is_some_and(|p| p.secure) {
        "https"
    } else {
        "http"
    };
    (format!("{scheme}://{host}"), host)
}

fn layout(req: &Request, title: &str, crumbs: &[(String, String)], body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · chartbridge" }
                link rel="stylesheet" href="/-/style.css";
            }
            body {
                header {
                    nav aria-label="breadcrumb" {
                        a href="/-/" { "chartbridge" }
                        @for (href, text) in crumbs {
                            " / " a href=(href) { (text) }
                        }
                    }
                    form method="get" action="/-/" role="search" {
                        label for="q" class="sr" { "Search charts" }
                        input id="q" type="search" name="q" placeholder="Search charts";
                        button type="submit" { "Search" }
                    }
                }
                main { (body) }
            }
        }
    };
    page(req, markup)
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn human(n: u64) -> String {
    crate::progress::human_bytes(n)
}

/// What stays as it is in a path segment or query value we write (RFC 3986 unreserved).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

fn chart_href(upstream: &str, chart: &str) -> String {
    let path: Vec<String> = chart.split('/').map(enc).collect();
    format!("/-/u/{}/c/{}", enc(upstream), path.join("/"))
}

fn version_href(upstream: &str, chart: &str, v: &str) -> String {
    format!("{}?version={}", chart_href(upstream, chart), enc(v))
}

/// What the home page says of an upstream.
struct UpstreamRow {
    name: String,
    kind: &'static str,
    url: String,
    state: String,
    /// CSS class of the state.
    class: &'static str,
    index: Option<(String, u64)>,
    charts: usize,
    versions: Option<usize>,
    /// What the row was read from, for the listing and search on the same page (read once).
    content: Option<Arc<crate::resolver::helm::IndexContent>>,
    repos: Vec<RepoName>,
}

async fn upstream_row(src: &Source) -> UpstreamRow {
    let c = src.config();
    let mut row = UpstreamRow {
        name: c.name.to_string(),
        kind: match c.kind {
            UpstreamKind::Helm => "helm",
            UpstreamKind::Oci => "oci",
        },
        url: crate::upstream::redact(&c.url),
        state: String::new(),
        class: "ok",
        index: None,
        charts: 0,
        versions: None,
        content: None,
        repos: Vec::new(),
    };
    match src {
        Source::Helm(h) => {
            let peek = h.peek_index().await;
            if let Some(content) = &peek.content {
                row.charts = content.entries().charts().count();
                row.versions = Some(content.entries().version_count());
                row.index = Some((
                    peek.state
                        .age
                        .map(ago)
                        .unwrap_or_else(|| "from disk".into()),
                    content.served.len() as u64,
                ));
            }
            (row.state, row.class) = match (&peek.state.failing, peek.state.age) {
                _ if c.policy.offline => ("offline".into(), "off"),
                (Some((since, e)), _) => (format!("stale since {} ago: {e}", ago(*since)), "bad"),
                (None, Some(a)) if a < c.index_ttl => ("fresh".into(), "ok"),
                (None, _) if peek.content.is_some() => (
                    "revalidating (the next request refreshes it)".into(),
                    "warn",
                ),
                _ => ("not fetched yet".into(), "warn"),
            };
            row.content = peek.content;
        }
        Source::Oci(o) => {
            row.repos = o.peek_repositories().await;
            row.charts = row.repos.len();
            (row.state, row.class) = if c.policy.offline {
                ("offline".into(), "off")
            } else {
                ("pull-through".into(), "ok")
            };
        }
    }
    row
}

/// `/` and `/-/`: every upstream this request may see, the cache, the most pulled charts,
/// and search results.
pub async fn home(site: &Site<'_>, q: Option<&str>) -> Result<Response> {
    let mut rows = Vec::new();
    for s in &site.upstreams {
        rows.push(upstream_row(s).await);
    }
    let (used, max) = site.cache.blob_usage();
    let (mem, mem_max) = site.cache.memory_usage().await;
    let overview = crate::metrics::cache_overview();
    let visible: Vec<String> = site
        .upstreams
        .iter()
        .map(|s| s.config().name.to_string())
        .collect();
    let pulled: Vec<_> = crate::metrics::most_pulled(50)
        .into_iter()
        .filter(|(u, _, _)| visible.contains(u))
        .take(10)
        .collect();
    let results = q.map(|q| search(&rows, q));
    let body = html! {
        @if let (Some(q), Some(results)) = (q, &results) {
            section {
                h1 { "Charts matching “" (q) "”" }
                @if results.is_empty() {
                    p { "Nothing here matches." }
                } @else {
                    table {
                        thead { tr { th { "Chart" } th { "Upstream" } th { "Description" } } }
                        tbody {
                            @for (u, c, d) in results {
                                tr {
                                    td { a href=(chart_href(u, c)) { (c) } }
                                    td { a href={ "/-/u/" (enc(u)) } { (u) } }
                                    td { (d) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h1 { "Upstreams" }
            table {
                thead { tr { th { "Name" } th { "Kind" } th { "URL" } th { "State" } th { "Index" } th { "Charts" } th { "Versions" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { a href={ "/-/u/" (enc(&r.name)) } { (r.name) } }
                            td { (r.kind) }
                            td { code { (r.url) } }
                            td { span class={ "state " (r.class) } { (r.state) } }
                            td {
                                @if let Some((age, size)) = &r.index { (age) " old, " (human(*size)) } @else { "–" }
                            }
                            td { (r.charts) }
                            td { @if let Some(v) = r.versions { (v) } @else { "–" } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Cache" }
            dl {
                dt { "Disk" } dd { (human(used)) " of " (human(max)) " (" (overview.blobs) " blobs)" }
                dt { "Memory tier" } dd { (human(mem)) " of " (human(mem_max)) }
                dt { "Hit ratio since start" }
                dd { @if let Some(h) = overview.hit_ratio { (format!("{:.1} %", h * 100.0)) } @else { "no lookups yet" } }
            }
            @if !pulled.is_empty() {
                h3 { "Most pulled" }
                ol {
                    @for (u, c, n) in &pulled {
                        li { a href=(chart_href(u, c)) { (u) "/" (c) } " (" (n) ")" }
                    }
                }
            }
        }
    };
    Ok(layout(site.req, "Catalog", &[], body))
}

/// Charts across the visible upstreams (`rows`) whose name, description or keywords contain
/// `q`.
fn search(rows: &[UpstreamRow], q: &str) -> Vec<(String, String, String)> {
    let needle = q.to_lowercase();
    let mut out = Vec::new();
    for row in rows {
        if let Some(content) = &row.content {
            for c in content.entries().chart_infos() {
                let hit = c.name.to_lowercase().contains(&needle)
                    || c.description.to_lowercase().contains(&needle)
                    || c.keywords.to_lowercase().contains(&needle);
                if hit {
                    out.push((
                        row.name.clone(),
                        c.name.to_string(),
                        c.description.to_string(),
                    ));
                }
            }
        }
        for r in row.repos.iter().filter(|r| r.as_str().contains(&needle)) {
            out.push((row.name.clone(), r.to_string(), String::new()));
        }
        if out.len() >= MAX_RESULTS {
            break;
        }
    }
    out.truncate(MAX_RESULTS);
    out
}

fn pager(base: &str, page: usize, pages: usize, extra: &str) -> Markup {
    html! {
        @if pages > 1 {
            nav class="pager" aria-label="pages" {
                @if page > 1 { a href={ (base) "?page=" (page - 1) (extra) } rel="prev" { "← previous" } " " }
                "page " (page) " of " (pages)
                @if page < pages { " " a href={ (base) "?page=" (page + 1) (extra) } rel="next" { "next →" } }
            }
        }
    }
}

/// `/-/u/<upstream>`: its charts (helm) or repositories (OCI), paginated and filterable.
pub async fn upstream(
    site: &Site<'_>,
    src: &Source,
    page: usize,
    filter: Option<&str>,
) -> Result<Response> {
    let name = src.config().name.to_string();
    let needle = filter.map(str::to_lowercase).unwrap_or_default();
    let base = format!("/-/u/{}", enc(&name));
    let extra = filter
        .map(|f| format!("&filter={}", enc(f)))
        .unwrap_or_default();
    let row = upstream_row(src).await;
    let (rows, total): (Vec<(String, String, String)>, usize) = match src {
        Source::Helm(_) => match &row.content {
            Some(content) => {
                let e = content.entries();
                let matching: Vec<_> = e
                    .chart_infos()
                    .filter(|c| {
                        needle.is_empty()
                            || c.name.to_lowercase().contains(&needle)
                            || c.description.to_lowercase().contains(&needle)
                    })
                    .collect();
                let total = matching.len();
                let rows = matching
                    .into_iter()
                    .skip((page - 1) * PAGE_ROWS)
                    .take(PAGE_ROWS)
                    .map(|c| {
                        let newest = e
                            .versions(c.name)
                            .and_then(|vs| version::highest_stable(vs.map(|v| v.version)))
                            .unwrap_or("–")
                            .to_string();
                        (c.name.to_string(), newest, c.description.to_string())
                    })
                    .collect();
                (rows, total)
            }
            None => (Vec::new(), 0),
        },
        Source::Oci(o) => {
            let repos: Vec<&RepoName> = row
                .repos
                .iter()
                .filter(|r| needle.is_empty() || r.as_str().contains(&needle))
                .collect();
            let total = repos.len();
            let mut rows = Vec::new();
            for r in repos
                .into_iter()
                .skip((page - 1) * PAGE_ROWS)
                .take(PAGE_ROWS)
            {
                let (tags, _) = o.peek_tags(r).await;
                let newest = tags
                    .as_deref()
                    .and_then(|t| version::highest_stable(t.iter().map(String::as_str)))
                    .unwrap_or("–")
                    .to_string();
                rows.push((r.to_string(), newest, String::new()));
            }
            (rows, total)
        }
    };
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    let body = html! {
        h1 { (name) }
        p { (row.kind) " upstream " code { (row.url) } " · " span class={ "state " (row.class) } { (row.state) } }
        form method="get" action=(base) {
            label for="filter" { "Filter " }
            input id="filter" type="search" name="filter" value=[filter];
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p {
                @if matches!(src, Source::Oci(_)) {
                    "No repositories known here: list them under " code { "charts:" } " in the configuration, or pull through the mirror first."
                } @else {
                    "No charts known here yet: the index is fetched by the first pull through the mirror."
                }
            }
        } @else {
            table {
                thead { tr { th { "Chart" } th { "Newest stable" } th { "Description" } } }
                tbody {
                    @for (c, newest, d) in &rows {
                        tr { td { a href=(chart_href(&name, c)) { (c) } } td { (newest) } td { (d) } }
                    }
                }
            }
            (pager(&base, page, pages, &extra))
        }
    };
    Ok(layout(
        site.req,
        &name,
        &[(base.clone(), name.clone())],
        body,
    ))
}

/// One row of a chart's versions.
struct VersionRow {
    version: String,
    app_version: String,
    created: String,
    digest: Option<String>,
    cached: bool,
    prerelease: bool,
}

/// `/-/u/<upstream>/c/<chart>`: versions and snippets; with `?version=`, that version.
pub async fn chart(
    site: &Site<'_>,
    src: &Source,
    chart: &str,
    version: Option<&str>,
    page: usize,
) -> Result<Response> {
    if let Some(v) = version {
        return version_page(site, src, chart, v).await;
    }
    let mut rows: Vec<VersionRow> = Vec::new();
    let mut latest: Option<String> = None;
    match src {
        Source::Helm(h) => {
            let content = h.peek_index().await.content.ok_or_else(|| unknown(chart))?;
            let e = content.entries();
            let entries: Vec<_> = e.versions(chart).ok_or_else(|| unknown(chart))?.collect();
            latest = version::highest_stable(entries.iter().map(|v| v.version)).map(str::to_string);
            let order = version::newest_first(entries.iter().map(|v| v.version));
            for v in order
                .into_iter()
                .skip((page - 1) * PAGE_ROWS)
                .take(PAGE_ROWS)
            {
                let entry = entries.iter().find(|x| x.version == v).expect("listed");
                let digest = (!entry.digest.is_empty()).then(|| entry.digest.to_string());
                let cached = match &digest {
                    Some(hex) => match Digest::from_hex(hex) {
                        Ok(d) => site.cache.has_blob(&d).await.unwrap_or(false),
                        Err(_) => false,
                    },
                    None => false,
                };
                rows.push(VersionRow {
                    version: v.to_string(),
                    app_version: entry.app_version.to_string(),
                    created: entry.created.unwrap_or_default().to_string(),
                    digest: digest.map(|d| format!("sha256:{d}")),
                    cached,
                    prerelease: version::parse_lenient(v).is_some_and(|p| !p.pre.is_empty()),
                });
            }
            let total = entries.len();
            Ok(chart_layout(site, src, chart, rows, latest, page, total))
        }
        Source::Oci(o) => {
            let repo: RepoName = chart.parse().map_err(|_| unknown(chart))?;
            let (tags, _) = o.peek_tags(&repo).await;
            let tags = tags.unwrap_or_default();
            if !tags.iter().any(|t| t == version::LATEST) {
                latest =
                    version::highest_stable(tags.iter().map(String::as_str)).map(str::to_string);
            }
            let order = version::newest_first(tags.iter().map(String::as_str));
            let total = order.len();
            for t in order
                .into_iter()
                .skip((page - 1) * PAGE_ROWS)
                .take(PAGE_ROWS)
            {
                let d = o.peek_tag(&repo, t).await;
                let cached = match &d {
                    Some(d) => site.cache.cached_manifest(d).await.ok().flatten().is_some(),
                    None => false,
                };
                rows.push(VersionRow {
                    version: t.to_string(),
                    app_version: String::new(),
                    created: String::new(),
                    digest: d.map(|d| d.to_string()),
                    cached,
                    prerelease: version::parse_lenient(&t.replace('_', "+"))
                        .is_some_and(|p| !p.pre.is_empty()),
                });
            }
            Ok(chart_layout(site, src, chart, rows, latest, page, total))
        }
    }
}

fn unknown(chart: &str) -> Error {
    Error::new(
        Kind::NotFound,
        format!("no chart {chart:?} known here (the index may not have been fetched yet)"),
    )
}

fn chart_layout(
    site: &Site<'_>,
    src: &Source,
    chart: &str,
    rows: Vec<VersionRow>,
    latest: Option<String>,
    page: usize,
    total: usize,
) -> Response {
    let name = src.config().name.to_string();
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    let shown = rows.first().map(|r| r.version.clone());
    let pick = latest.clone().or(shown).unwrap_or_else(|| "1.0.0".into());
    let body = html! {
        h1 { (chart) }
        p { "from " a href={ "/-/u/" (enc(&name)) } { (name) } " · " (total) " versions" }
        @if rows.is_empty() {
            p { "No versions known here yet." }
        } @else {
            table {
                thead { tr { th { "Version" } th { "App version" } th { "Created" } th { "Digest" } th { "Cached here" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td {
                                a href=(version_href(&name, chart, &r.version)) { (r.version) }
                                @if r.prerelease { " " span class="badge pre" { "prerelease" } }
                                @if latest.as_deref() == Some(r.version.as_str()) { " " span class="badge latest" { "latest" } }
                            }
                            td { (r.app_version) }
                            td { (r.created) }
                            td { @if let Some(d) = &r.digest { code title=(d) { (d.get(..19).unwrap_or(d)) "…" } } }
                            td { @if r.cached { "yes" } @else { "no" } }
                        }
                    }
                }
            }
            (pager(&chart_href(&name, chart), page, pages, ""))
        }
        (snippets(site.req, src, chart, &pick))
    };
    layout(
        site.req,
        chart,
        &[
            (format!("/-/u/{}", enc(&name)), name.clone()),
            (chart_href(&name, chart), chart.to_string()),
        ],
        body,
    )
}

/// Copy-paste snippets for this chart, naming this mirror as the browser reached it.
fn snippets(req: &Request, src: &Source, chart: &str, version: &str) -> Markup {
    let (base, host) = origin(req);
    let up = src.config().name.to_string();
    let plain = base.starts_with("http://");
    let helm_flag = if plain { " --plain-http" } else { "" };
    let short = chart.rsplit('/').next().unwrap_or(chart);
    let repo_url = match src {
        Source::Helm(_) => format!("{base}/{up}"),
        Source::Oci(_) => format!("{base}/{up}/{chart}"),
    };
    let insecure = if plain { "\n  insecure: true" } else { "" };
    let pull = format!("helm pull oci://{host}/{up}/{chart} --version {version}{helm_flag}");
    let repo_add =
        format!("helm repo add {up} {repo_url}\nhelm pull {up}/{short} --version {version}");
    let flux_oci = format!(
        "apiVersion: source.toolkit.fluxcd.io/v1beta2\nkind: OCIRepository\nmetadata:\n  name: {short}\n  namespace: flux-system\nspec:\n  interval: 10m\n  url: oci://{host}/{up}/{chart}\n  ref:\n    tag: \"{version}\"\n  layerSelector:\n    mediaType: application/vnd.cncf.helm.chart.content.v1.tar+gzip\n    operation: copy{insecure}"
    );
    let flux_helm = format!(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: {up}\n  namespace: flux-system\nspec:\n  interval: 10m\n  url: {repo_url}"
    );
    let argo = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {short}\n  namespace: argocd\nspec:\n  project: default\n  source:\n    repoURL: {repo_url}\n    chart: {short}\n    targetRevision: \"{version}\"\n  destination:\n    server: https://kubernetes.default.svc\n    namespace: {short}"
    );
    let containerd = match src {
        Source::Oci(o) => Some(format!(
            "# /etc/containerd/certs.d/{}/hosts.toml\nserver = \"{}\"\n\n[host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]",
            o.config.host_port(),
            crate::upstream::redact(&o.config.url).trim_end_matches('/')
        )),
        Source::Helm(_) => None,
    };
    html! {
        section class="snippets" {
            h2 { "Use it" }
            h3 { "helm (OCI)" } pre { code { (pull) } }
            h3 { "helm (repository)" } pre { code { (repo_add) } }
            h3 { "Flux OCIRepository" } pre { code { (flux_oci) } }
            h3 { "Flux HelmRepository" } pre { code { (flux_helm) } }
            h3 { "Argo CD Application" } pre { code { (argo) } }
            @if let Some(c) = containerd { h3 { "containerd hosts.toml" } pre { code { (c) } } }
        }
    }
}

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
async fn version_page(site: &Site<'_>, src: &Source, chart: &str, v: &str) -> Result<Response> {
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
