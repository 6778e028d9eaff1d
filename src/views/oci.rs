//! The distribution-spec pull API over a helm upstream: tags/list with pagination, manifests by
//! tag or digest, blobs with Range. Every manifest and blob response carries `Content-Type`,
//! `Content-Length` and `Docker-Content-Digest`, on GET and HEAD alike.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Kind, Result};
use crate::http::{blob_response, Request, Response};
use crate::ids::{Digest, Reference, RepoName, UpstreamName};
use crate::resolver::HelmUpstream;

/// The chart a repository name means under a helm upstream: a chart name is one component.
fn chart(repo: &RepoName) -> Result<&str> {
    if repo.as_str().contains('/') {
        return Err(Error::new(
            Kind::NameUnknown,
            format!(
                "{repo:?} is not a chart: charts of a helm upstream are /v2/<upstream>/<chart>"
            ),
        ));
    }
    Ok(repo.as_str())
}

/// `GET /v2/`.
pub fn api_base(req: &Request) -> Response {
    Response::new(200).with_body("application/json", Bytes::from_static(b"{}"), req.is_head())
}

/// `GET /v2/<name>/tags/list?n=&last=`: lexically sorted, paginated with a `Link` header.
pub async fn tags(
    up: &Arc<HelmUpstream>,
    upstream: &UpstreamName,
    repo: &RepoName,
    n: Option<usize>,
    last: Option<&str>,
    req: &Request,
) -> Result<Response> {
    let all = up.tags(chart(repo)?).await?;
    let start = match last {
        Some(l) => all.partition_point(|t| t.as_str() <= l),
        None => 0,
    };
    let rest = &all[start..];
    let page = match n {
        Some(n) => &rest[..n.min(rest.len())],
        None => rest,
    };
    let name = format!("{upstream}/{repo}");
    let body = serde_json::json!({"name": name, "tags": page});
    let mut resp = Response::new(200);
    if let (Some(n), Some(last_tag)) = (n, page.last()) {
        if page.len() < rest.len() {
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", last_tag)
                .finish();
            resp = resp.header("Link", format!("</v2/{name}/tags/list?{q}>; rel=\"next\""));
        }
    }
    Ok(resp.with_body(
        "application/json",
        Bytes::from(body.to_string()),
        req.is_head(),
    ))
}

/// `GET|HEAD /v2/<name>/manifests/<tag|digest>`.
pub async fn manifest(
    up: &Arc<HelmUpstream>,
    repo: &RepoName,
    reference: &Reference,
    req: &Request,
) -> Result<Response> {
    let m = match reference {
        Reference::Tag(tag) => {
            let resolved = up.resolve(chart(repo)?, tag).await?;
            if resolved.synthesized_latest {
                crate::metrics::latest_synthesized();
            }
            up.manifest(chart(repo)?, &resolved.version).await?
        }
        Reference::Digest(d) => up
            .manifest_by_digest(d)
            .await?
            .ok_or_else(|| Error::new(Kind::ManifestUnknown, format!("manifest {d} unknown")))?,
    };
    Ok(Response::new(200)
        .header("Docker-Content-Digest", m.digest.to_string())
        .header("ETag", format!("\"{}\"", m.digest))
        .with_body(m.media_type, m.bytes, req.is_head()))
}

/// `GET|HEAD /v2/<name>/blobs/<digest>`.
pub async fn blob(
    up: &Arc<HelmUpstream>,
    repo: &RepoName,
    d: &Digest,
    req: &Request,
) -> Result<Response> {
    let bytes = up.blob(chart(repo)?, d).await?;
    Ok(blob_response(
        req,
        "application/octet-stream",
        bytes,
        Some(d),
    ))
}
