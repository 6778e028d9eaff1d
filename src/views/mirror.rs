//! The Helm HTTP repository mirror: the upstream's index.yaml with every chart URL pointing back
//! at chartbridge (relative URLs, so the bytes do not depend on the Host a client used), and the
//! chart archives and provenance files behind those URLs, served from the cache.

use std::sync::Arc;

use crate::error::{Error, Kind, Result};
use crate::http::{blob_response, Request, Response};
use crate::resolver::HelmUpstream;

/// `GET /<upstream>/index.yaml`, with `ETag` / `If-None-Match`.
pub async fn index(up: &Arc<HelmUpstream>, req: &Request) -> Result<Response> {
    let state = up.index().await?;
    let matches = req.if_none_match.as_deref().is_some_and(|h| {
        h.split(',')
            .any(|t| t.trim() == state.etag || t.trim() == "*")
    });
    if matches {
        return Ok(Response::new(304).header("ETag", state.etag.clone()));
    }
    Ok(Response::new(200)
        .header("ETag", state.etag.clone())
        .header("Cache-Control", "no-cache")
        .with_body("application/x-yaml", state.rewritten.clone(), req.is_head()))
}

/// `GET /<upstream>/-/<chart>/<version>/<chart>-<version>.tgz[.prov]`.
pub async fn archive(
    up: &Arc<HelmUpstream>,
    chart: &str,
    version: &str,
    prov: bool,
    req: &Request,
) -> Result<Response> {
    if prov {
        let (bytes, d) = up.provenance(chart, version).await?.ok_or_else(|| {
            Error::new(
                Kind::NotFound,
                format!("{chart} {version} has no provenance file upstream"),
            )
        })?;
        return Ok(blob_response(
            req,
            "application/octet-stream",
            bytes,
            Some(&d),
        ));
    }
    let (bytes, d) = up.archive(chart, version).await?;
    Ok(blob_response(req, "application/gzip", bytes, Some(&d)))
}
