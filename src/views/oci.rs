//! The distribution-spec pull API: tags/list with pagination, manifests by tag or digest, blobs
//! with Range, referrers. Over a helm upstream the artifacts are synthesised; over an OCI
//! upstream they are the upstream's bytes. Every manifest and blob response carries
//! `Content-Type`, `Content-Length` and `Docker-Content-Digest`, on GET and HEAD alike.

use bytes::Bytes;

use crate::cache::BlobData;
use crate::cache::Served;
use crate::error::{Error, Kind, Result};
use crate::http::{blob_response, data_response, Caching, Content, Request, Response};
use crate::ids::{Digest, Reference, RepoName, UpstreamName};
use crate::resolver::oci::BlobAnswer;
use crate::resolver::{HelmUpstream, ServedManifest, Source};

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

/// Cached blob bytes as a response body.
fn content(data: BlobData) -> Content {
    match data {
        BlobData::Bytes(b) => Content::Bytes(b),
        BlobData::Mapped(m) => Content::Mapped(m),
        BlobData::File(f, n) => Content::File(f, n),
    }
}

/// `GET /v2/`.
pub fn api_base(req: &Request) -> Response {
    Response::new(200).with_body("application/json", Bytes::from_static(b"{}"), req.is_head())
}

/// One page of a sorted list: the names after `last`, at most `n` of them, and whether more
/// follow (then the answer carries a `Link` to the next page).
fn page<'a>(all: &'a [String], n: Option<usize>, last: Option<&str>) -> (&'a [String], bool) {
    let start = match last {
        Some(l) => all.partition_point(|t| t.as_str() <= l),
        None => 0,
    };
    let rest = &all[start..];
    match n {
        Some(n) if n < rest.len() => (&rest[..n], true),
        _ => (rest, false),
    }
}

/// The `Link` header to the page after `page`, keeping `ns` when the client routed with it.
fn next_link(path: &str, n: Option<usize>, page: &[String], ns: Option<&str>) -> Option<String> {
    let (n, last) = (n?, page.last()?);
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("n", &n.to_string()).append_pair("last", last);
    if let Some(ns) = ns {
        q.append_pair("ns", ns);
    }
    Some(format!("<{path}?{}>; rel=\"next\"", q.finish()))
}

/// A tags/list answer, serialised straight from the borrowed list (no JSON tree built per
/// request); keys in the order `serde_json::json!` gave them.
#[derive(serde::Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

/// A `_catalog` answer.
#[derive(serde::Serialize)]
struct Repositories<'a> {
    repositories: &'a [String],
}

fn json_body(v: &impl serde::Serialize) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot serialise an answer: {e}")))
}

/// `GET /v2/<name>/tags/list?n=&last=`: lexically sorted, paginated with a `Link` header.
/// `name` is the repository as the client named it; `repo` is the part below the upstream.
pub async fn tags(
    src: &Source,
    name: &RepoName,
    repo: &RepoName,
    ns: Option<&str>,
    n: Option<usize>,
    last: Option<&str>,
    req: &Request,
) -> Result<Response> {
    let all = match src {
        Source::Helm(h) => {
            let index = h.index().await?;
            let tags = HelmUpstream::tags(&index.value, chart(repo)?, h.config.float)?;
            index.map(|_| tags)
        }
        Source::Oci(o) => o.tags(repo).await?.map(std::sync::Arc::new),
    };
    let (list, more) = page(&all.value, n, last);
    let body = json_body(&TagList {
        name: name.as_str(),
        tags: list,
    })?;
    let mut resp = Response::new(200);
    if more {
        if let Some(link) = next_link(&format!("/v2/{name}/tags/list"), n, list, ns) {
            resp = resp.header("Link", link);
        }
    }
    Ok(resp
        .with_body("application/json", body, req.is_head())
        .fresh_for(all.fresh_for)
        .stale(all.stale))
}

/// The repositories an upstream serves, as `_catalog` names them (below the upstream): a
/// helm upstream's charts, an OCI upstream's `charts:` or its registry's catalog.
async fn repositories(src: &Source) -> Result<Served<Vec<String>>> {
    match src {
        Source::Helm(h) => {
            let index = h.index().await?;
            let names = index.value.entries().charts().map(str::to_string).collect();
            Ok(index.map(|_| names))
        }
        Source::Oci(o) => Ok(o
            .repositories()
            .await?
            .map(|r| r.iter().map(|n| n.to_string()).collect())),
    }
}

/// `GET /v2/_catalog?n=&last=`: `<upstream>/<repository>` for every upstream in `sources`
/// (those the client may read), sorted and paginated like tags. An upstream that cannot say
/// (down with nothing cached, or no catalog) is left out, with a log line.
pub async fn catalog(
    sources: Vec<(&UpstreamName, &Source)>,
    n: Option<usize>,
    last: Option<&str>,
    req: &Request,
) -> Result<Response> {
    let mut all = Vec::new();
    let mut from = Served::fresh(());
    for (name, src) in sources {
        match repositories(src).await {
            Ok(list) => {
                all.extend(list.value.iter().map(|r| format!("{name}/{r}")));
                from = from.then(list.map(|_| ()));
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "left out of the catalog");
            }
        }
    }
    all.sort();
    all.dedup();
    let (list, more) = page(&all, n, last);
    let body = json_body(&Repositories { repositories: list })?;
    let mut resp = Response::new(200);
    if more {
        if let Some(link) = next_link("/v2/_catalog", n, list, None) {
            resp = resp.header("Link", link);
        }
    }
    Ok(resp
        .with_body("application/json", body, req.is_head())
        .fresh_for(from.fresh_for)
        .stale(from.stale))
}

/// `GET|HEAD /v2/<name>/manifests/<tag|digest>`.
pub async fn manifest(
    src: &Source,
    repo: &RepoName,
    reference: &Reference,
    req: &Request,
) -> Result<Response> {
    let m: Served<ServedManifest> =
        match src {
            Source::Helm(up) => match reference {
                Reference::Tag(tag) => {
                    // One index snapshot for the whole request.
                    let index = up.index().await?;
                    let m = up.manifest_for_tag(&index.value, chart(repo)?, tag).await?;
                    if m.synthesized_latest {
                        crate::metrics::latest_synthesized();
                    }
                    index.map(|_| m.manifest)
                }
                Reference::Digest(d) => {
                    Served::fresh(up.manifest_by_digest(chart(repo)?, d).await?.ok_or_else(
                        || Error::new(Kind::ManifestUnknown, format!("manifest {d} unknown")),
                    )?)
                }
            },
            Source::Oci(up) => up.manifest(repo, reference).await?,
        };
    let caching = match reference {
        Reference::Digest(_) => Caching::Immutable,
        Reference::Tag(_) => m.fresh_for.map_or(Caching::Revalidate, Caching::For),
    };
    let (stale, m) = (m.stale, m.value);
    Ok(Response::new(200)
        .header("Docker-Content-Digest", m.digest.text())
        .header("ETag", m.digest.etag())
        .with_body(m.media_type, m.bytes, req.is_head())
        .caching(caching)
        .stale(stale))
}

/// `GET|HEAD /v2/<name>/blobs/<digest>`: immutable, so caches in front may keep it.
pub async fn blob(src: &Source, repo: &RepoName, d: &Digest, req: &Request) -> Result<Response> {
    Ok(blob_of(src, repo, d, req)
        .await?
        .caching(Caching::Immutable))
}

async fn blob_of(src: &Source, repo: &RepoName, d: &Digest, req: &Request) -> Result<Response> {
    const BLOB: &str = "application/octet-stream";
    match src {
        Source::Helm(up) => {
            let bytes = up.blob(chart(repo)?, d).await?;
            Ok(blob_response(req, BLOB, bytes, Some(d)))
        }
        Source::Oci(up) => {
            let etag = d.etag();
            let range = req.range_for(Some(&etag));
            let answer = up.blob(repo, d, req.is_head(), range).await?;
            let cold = |status| {
                Response::new(status)
                    .header("Docker-Content-Digest", d.to_string())
                    .header("ETag", etag.clone())
                    .header("Accept-Ranges", "bytes")
            };
            Ok(match answer {
                BlobAnswer::Data(data) => data_response(req, BLOB, content(data), Some(d)),
                BlobAnswer::Head(len) => cold(200)
                    .header("Content-Type", BLOB)
                    .header("Content-Length", len.to_string()),
                BlobAnswer::Stream(len, rx) => cold(200).with_stream(BLOB, len, rx),
                BlobAnswer::Partial {
                    len,
                    start,
                    end,
                    rx,
                } => cold(206)
                    .header("Content-Range", format!("bytes {start}-{}/{len}", end - 1))
                    .with_stream(BLOB, end - start, rx),
            })
        }
    }
}

/// `GET /v2/<name>/referrers/<digest>`: passed through for OCI upstreams; a helm upstream's
/// synthesised charts have no referrers, which is an empty index.
pub async fn referrers(
    src: &Source,
    repo: &RepoName,
    d: &Digest,
    query: Option<&str>,
    req: &Request,
) -> Result<Response> {
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    match src {
        Source::Helm(_) => {
            let empty =
                serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []});
            Ok(Response::new(200).with_body(INDEX, Bytes::from(empty.to_string()), req.is_head()))
        }
        Source::Oci(up) => {
            let (status, ct, body) = up.referrers(repo, d, query).await?;
            let mut r = Response::new(status).with_body(ct, body, req.is_head());
            r.status = status;
            Ok(r)
        }
    }
}
