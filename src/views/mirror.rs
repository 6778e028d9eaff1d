//! The Helm HTTP repository view. For a helm upstream: its index.yaml with every chart URL
//! pointing back at chartbridge (relative URLs, so the bytes do not depend on the Host a client
//! used) and the archives behind them, from the cache. For an OCI upstream: an index.yaml built
//! from a chart repository's tags (or the upstream's charts), and the chart layers behind it.

use crate::error::{Error, Kind, Result};
use crate::http::{blob_response, Request, Response};
use crate::ids::RepoName;
use crate::resolver::Source;

/// `GET /<upstream>[/<repository>]/index.yaml`, with `ETag` and a `max-age` of what is left
/// of the index's freshness.
pub async fn index(src: &Source, repo: Option<&RepoName>, req: &Request) -> Result<Response> {
    let (bytes, etag, stale, fresh_for) = match (src, repo) {
        (Source::Helm(up), None) => {
            let index = up.index().await?;
            (
                index.value.served.clone(),
                index.value.etag.clone(),
                index.stale,
                index.fresh_for,
            )
        }
        (Source::Helm(up), Some(r)) => {
            return Err(Error::new(
                Kind::NotFound,
                format!(
                    "{} is a helm repository: its index is /{}/index.yaml, not under {r}",
                    up.config.name, up.config.name
                ),
            ))
        }
        (Source::Oci(up), repo) => {
            let built = up.chart_index(repo).await?;
            (built.bytes, built.etag, built.stale, built.fresh_for)
        }
    };
    // `If-None-Match` -> 304 is answered for every view in `http::finish`.
    Ok(Response::new(200)
        .header("ETag", etag)
        .with_body("application/x-yaml", bytes, req.is_head())
        .fresh_for(fresh_for)
        .stale(stale))
}

/// `GET /<upstream>[/<repository>]/-/<chart>/<version>/<chart>-<version>.tgz[.prov]`.
pub async fn archive(
    src: &Source,
    repo: Option<&RepoName>,
    chart: &str,
    version: &str,
    prov: bool,
    req: &Request,
) -> Result<Response> {
    // An archive is named by version: as fresh as the index that says which bytes it is.
    let mut fresh_for = None;
    let (bytes, d, content_type) = match (src, repo) {
        (Source::Helm(up), None) => {
            let index = up.index().await?;
            fresh_for = index.fresh_for;
            let at = up.locate(&index.value, chart, version)?;
            if prov {
                let (b, d) = up.provenance(&at).await?.ok_or_else(|| {
                    Error::new(
                        Kind::NotFound,
                        format!("{chart} {version} has no provenance file upstream"),
                    )
                })?;
                (b, d, "application/octet-stream")
            } else {
                let (b, d) = up.archive(&at).await?;
                (b, d, "application/gzip")
            }
        }
        (Source::Oci(up), Some(r)) => {
            let (b, d) = up.chart_archive(r, version, prov).await?;
            (
                b,
                d,
                if prov {
                    "application/octet-stream"
                } else {
                    "application/gzip"
                },
            )
        }
        _ => {
            return Err(Error::new(
                Kind::NotFound,
                format!("no archive {chart} {version} here"),
            ))
        }
    };
    Ok(blob_response(req, content_type, bytes, Some(&d)).fresh_for(fresh_for))
}
