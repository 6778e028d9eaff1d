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
use maud::{html, Markup, DOCTYPE};

use crate::cache::Cache;
use crate::config::UpstreamKind;
use crate::convert::version;
use crate::error::Result;
use crate::http::{Request, Response};
use crate::ids::RepoName;
use crate::resolver::Source;

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
        resp.headers.push((k, v.into()));
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

mod chart;
mod detail;

pub use chart::chart;
pub use detail::fetch;
