//! A chart's page: its versions and the snippets that pull it.

use maud::{html, Markup};

use super::*;
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::http::{Request, Response};
use crate::ids::{Digest, RepoName};
use crate::resolver::Source;

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
        return super::detail::version_page(site, src, chart, v).await;
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

pub(super) fn unknown(chart: &str) -> Error {
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
pub(super) fn snippets(req: &Request, src: &Source, chart: &str, version: &str) -> Markup {
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
