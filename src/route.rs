//! The edge: method + raw path + query -> a typed `Route`. Every identifier is validated here
//! (names, tags, digests by the distribution grammar; mirror path segments decoded and checked
//! for traversal), so nothing below ever splits a string. Calls only `ids`.

use std::collections::HashMap;
use std::str::FromStr;

use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Reference, RepoName, UpstreamName};

#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// `GET /v2/`: the API version check.
    ApiBase,
    /// `GET /v2/_catalog?n=&last=`: the repositories of every upstream the client may read.
    Catalog {
        n: Option<usize>,
        last: Option<String>,
    },
    /// `/v2/<name>/...`: `name` is the whole repository path; which upstream serves it (a path
    /// prefix, containerd's `ns` parameter, or the default upstream) is decided by the app,
    /// which knows the configuration.
    Oci {
        name: RepoName,
        /// containerd's `?ns=<registry host>`.
        ns: Option<String>,
        op: OciOp,
    },
    /// `GET /<upstream>[/<repository>]/index.yaml`
    MirrorIndex {
        upstream: UpstreamName,
        /// For an OCI upstream: the chart repository whose tags become the index.
        repo: Option<RepoName>,
    },
    /// `GET /<upstream>[/<repository>]/-/<chart>/<version>/<file>` (`.tgz` or `.tgz.prov`)
    MirrorArchive {
        upstream: UpstreamName,
        repo: Option<RepoName>,
        chart: String,
        version: String,
        prov: bool,
    },
    Metrics,
    Healthz,
    Readyz,
    /// The catalog page for people: `/-/...`, and `/` asked for as HTML.
    Page(Page),
}

/// A page of the catalog (all under `/-/`, a prefix no upstream name can take).
#[derive(Clone, Debug, PartialEq)]
pub enum Page {
    /// `/-/?q=`: every upstream, the cache, and a search across charts.
    Home { q: Option<String> },
    /// `/-/style.css`
    Style,
    /// `/-/u/<upstream>?page=&filter=`
    Upstream {
        upstream: UpstreamName,
        page: usize,
        filter: Option<String>,
    },
    /// `/-/u/<upstream>/c/<chart...>[?version=]`: a chart, or one version of it.
    Chart {
        upstream: UpstreamName,
        chart: String,
        version: Option<String>,
        page: usize,
    },
    /// `POST /-/u/<upstream>/c/<chart...>/fetch?version=`: fetch one version into the cache.
    Fetch {
        upstream: UpstreamName,
        chart: String,
        version: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum OciOp {
    Tags {
        n: Option<usize>,
        last: Option<String>,
    },
    Manifest(Reference),
    Blob(Digest),
    /// `referrers/<digest>`, with the query (`artifactType`) passed on.
    Referrers(Digest, Option<String>),
}

impl Route {
    /// A bounded name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::ApiBase => "base",
            Route::Catalog { .. } => "catalog",
            Route::Oci {
                op: OciOp::Tags { .. },
                ..
            } => "tags",
            Route::Oci {
                op: OciOp::Manifest(_),
                ..
            } => "manifest",
            Route::Oci {
                op: OciOp::Blob(_), ..
            } => "blob",
            Route::Oci {
                op: OciOp::Referrers(..),
                ..
            } => "referrers",
            Route::MirrorIndex { .. } => "index",
            Route::MirrorArchive { .. } => "archive",
            Route::Metrics => "metrics",
            Route::Healthz | Route::Readyz => "health",
            Route::Page(_) => "page",
        }
    }
}

/// Longest path we consider.
const MAX_PATH: usize = 2048;

/// Whether a path is on the OCI API (errors there are OCI JSON).
pub fn is_oci_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

pub fn parse(method: &str, path: &str, query: Option<&str>) -> Result<Route> {
    if path.len() > MAX_PATH {
        return Err(Error::new(Kind::BadRequest, "path too long"));
    }
    let read = method == "GET" || method == "HEAD";
    if path == "/-" || path.starts_with("/-/") {
        return parse_page(method, path, query).map(Route::Page);
    }
    if is_oci_path(path) {
        if !read {
            return Err(refuse_write(method, path, query));
        }
        return parse_oci(path, query);
    }
    if !read {
        return Err(Error::new(
            Kind::Unsupported,
            format!("{method} is not supported"),
        ));
    }
    match path {
        "/metrics" => return Ok(Route::Metrics),
        "/healthz" => return Ok(Route::Healthz),
        "/readyz" => return Ok(Route::Readyz),
        _ => {}
    }
    parse_mirror(path)
}

/// A page route. Only the fetch action is a POST.
fn parse_page(method: &str, path: &str, query: Option<&str>) -> Result<Page> {
    let not_found = || Error::new(Kind::NotFound, format!("no such page: {path}"));
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        params.insert(k.into_owned(), v.into_owned());
    }
    let text = |k: &str| {
        params
            .get(k)
            .map(|v| v.trim().chars().take(200).collect::<String>())
            .filter(|v| !v.is_empty())
    };
    let page = params
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 100_000);
    let read = method == "GET" || method == "HEAD";
    let rest = path.trim_start_matches("/-").trim_start_matches('/');
    if rest.is_empty() || rest == "style.css" {
        if !read {
            return Err(Error::new(
                Kind::Unsupported,
                format!("{method} is not supported"),
            ));
        }
        return Ok(if rest.is_empty() {
            Page::Home { q: text("q") }
        } else {
            Page::Style
        });
    }
    let rest = rest.strip_prefix("u/").ok_or_else(not_found)?;
    let (upstream, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let upstream: UpstreamName = upstream.parse().map_err(|_| not_found())?;
    if tail.is_empty() {
        if !read {
            return Err(Error::new(
                Kind::Unsupported,
                format!("{method} is not supported"),
            ));
        }
        return Ok(Page::Upstream {
            upstream,
            page,
            filter: text("filter"),
        });
    }
    let chart = tail.strip_prefix("c/").ok_or_else(not_found)?;
    let (chart, fetch) = match chart.strip_suffix("/fetch") {
        Some(c) => (c, true),
        None => (chart, false),
    };
    let chart = percent_encoding::percent_decode_str(chart)
        .decode_utf8()
        .map_err(|_| not_found())?;
    let sane = !chart.is_empty()
        && chart.len() <= 255
        && chart.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if !sane {
        return Err(not_found());
    }
    let chart = chart.into_owned();
    match (fetch, method) {
        (true, "POST") => Ok(Page::Fetch {
            upstream,
            chart,
            version: text("version")
                .ok_or_else(|| Error::new(Kind::BadRequest, "which version? (?version=)"))?,
        }),
        (true, _) => Err(Error::new(
            Kind::Unsupported,
            "fetching into the cache is a POST",
        )),
        (false, _) if read => Ok(Page::Chart {
            upstream,
            chart,
            version: text("version"),
            page,
        }),
        (false, _) => Err(Error::new(
            Kind::Unsupported,
            format!("{method} is not supported"),
        )),
    }
}

/// Why a write to `/v2/` is refused: 400 `DIGEST_INVALID` when the digest it names (a
/// manifest reference with a `:`, a blob reference, an upload's `?digest=`) cannot be one, as
/// a registry checks before anything else; otherwise 405: this mirror is read-only.
fn refuse_write(method: &str, path: &str, query: Option<&str>) -> Error {
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    let named = rest.rsplit_once('/').and_then(|(head, reference)| {
        if head.ends_with("/blobs") || (head.ends_with("/manifests") && reference.contains(':')) {
            Some(reference.to_string())
        } else {
            None
        }
    });
    let asked = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "digest")
        .map(|(_, v)| v.into_owned());
    for d in named.into_iter().chain(asked) {
        if let Err(e) = Digest::from_str(&d) {
            return e;
        }
    }
    Error::new(
        Kind::Unsupported,
        format!("{method} is not supported: chartbridge is a read-only mirror"),
    )
}

fn parse_oci(path: &str, query: Option<&str>) -> Result<Route> {
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    if rest.is_empty() || rest == "/" {
        return Ok(Route::ApiBase);
    }
    let rest = &rest[1..];
    let not_found = || Error::new(Kind::NotFound, format!("no such API endpoint: {path}"));
    let (mut n, mut last, mut ns, mut artifact_type) = (None, None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "n" => {
                n = Some(v.parse::<usize>().map_err(|_| {
                    Error::new(Kind::BadRequest, format!("invalid page size n={v:?}"))
                })?)
            }
            "last" => last = Some(v.into_owned()),
            "ns" => ns = Some(v.into_owned()),
            "artifactType" => artifact_type = Some(v.into_owned()),
            _ => {}
        }
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog { n, last });
    }
    let (name, op) = if let Some(name) = rest.strip_suffix("/tags/list") {
        (name, OciOp::Tags { n, last })
    } else {
        let (head, reference) = rest.rsplit_once('/').ok_or_else(not_found)?;
        if let Some(name) = head.strip_suffix("/manifests") {
            // A reference that is neither a tag nor a digest names no manifest: 404, as
            // registries answer (the conformance suite asks for `.INVALID_MANIFEST_NAME`).
            let r = Reference::from_str(reference).map_err(|_| {
                Error::new(
                    Kind::ManifestUnknown,
                    format!("{reference:?} is not a tag or a digest: no such manifest"),
                )
            })?;
            (name, OciOp::Manifest(r))
        } else if let Some(name) = head.strip_suffix("/blobs") {
            (name, OciOp::Blob(Digest::from_str(reference)?))
        } else if let Some(name) = head.strip_suffix("/referrers") {
            let q = artifact_type.map(|t| {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("artifactType", &t)
                    .finish()
            });
            (name, OciOp::Referrers(Digest::from_str(reference)?, q))
        } else {
            return Err(not_found());
        }
    };
    Ok(Route::Oci {
        name: RepoName::from_str(name)?,
        ns,
        op,
    })
}

/// Splits a mirror path into decoded segments, refusing traversal and encoded separators.
fn segments(path: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::new(Kind::BadRequest, format!("invalid path {path:?}: {why}"));
    let inner = path
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with /"))?;
    inner
        .split('/')
        .map(|seg| {
            let s = percent_encoding::percent_decode_str(seg)
                .decode_utf8()
                .map_err(|_| bad("not UTF-8"))?;
            if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
                return Err(bad("empty, dot or encoded-separator segment"));
            }
            Ok(s.into_owned())
        })
        .collect()
}

/// The repository path between the upstream and the file, if any (`a/b` in `/up/a/b/index.yaml`).
fn repo_between(segs: &[String]) -> Result<Option<RepoName>> {
    if segs.is_empty() {
        Ok(None)
    } else {
        segs.join("/").parse().map(Some)
    }
}

fn parse_mirror(path: &str) -> Result<Route> {
    let segs = segments(path)?;
    let not_found = || Error::new(Kind::NotFound, format!("nothing here: {path}"));
    let n = segs.len();
    if n >= 2 && segs[n - 1] == "index.yaml" {
        return Ok(Route::MirrorIndex {
            upstream: segs[0].parse()?,
            repo: repo_between(&segs[1..n - 1])?,
        });
    }
    if n >= 5 && segs[n - 4] == "-" {
        let (chart, version, file) = (&segs[n - 3], &segs[n - 2], &segs[n - 1]);
        let stem = format!("{chart}-{version}.tgz");
        let prov = if *file == stem {
            false
        } else if *file == format!("{stem}.prov") {
            true
        } else {
            return Err(not_found());
        };
        return Ok(Route::MirrorArchive {
            upstream: segs[0].parse()?,
            repo: repo_between(&segs[1..n - 4])?,
            chart: chart.clone(),
            version: version.clone(),
            prov,
        });
    }
    Err(not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(path: &str) -> Result<Route> {
        parse("GET", path, None)
    }

    #[test]
    fn spec_answers_for_bad_references_writes_and_the_catalog() {
        let kind = |m: &str, p: &str, q: Option<&str>| parse(m, p, q).unwrap_err().kind();
        assert_eq!(
            kind("GET", "/v2/a/manifests/.INVALID_MANIFEST_NAME", None),
            Kind::ManifestUnknown
        );
        assert_eq!(
            kind("HEAD", "/v2/a/manifests/sha256:nothex", None),
            Kind::ManifestUnknown
        );
        assert_eq!(
            kind("GET", "/v2/a/blobs/sha256:nothex", None),
            Kind::DigestInvalid
        );
        assert_eq!(
            kind("PUT", "/v2/a/manifests/sha256:totallywrong", None),
            Kind::DigestInvalid
        );
        assert_eq!(kind("DELETE", "/v2/a/blobs/x", None), Kind::DigestInvalid);
        assert_eq!(
            kind("POST", "/v2/a/blobs/uploads/", Some("digest=sha256:zz")),
            Kind::DigestInvalid
        );
        assert_eq!(kind("PUT", "/v2/a/manifests/v1", None), Kind::Unsupported);
        assert_eq!(
            kind("PATCH", "/v2/a/blobs/uploads/u1", None),
            Kind::Unsupported
        );
        assert_eq!(
            kind("POST", "/v2/a/blobs/uploads/", None),
            Kind::Unsupported
        );
        assert_eq!(
            parse("GET", "/v2/_catalog", Some("n=5&last=a%2Fb")).unwrap(),
            Route::Catalog {
                n: Some(5),
                last: Some("a/b".into())
            }
        );
    }

    #[test]
    fn oci_routes() {
        assert_eq!(oci("/v2/").unwrap(), Route::ApiBase);
        assert_eq!(oci("/v2").unwrap(), Route::ApiBase);
        let r = oci("/v2/metallb/metallb/manifests/0.14.8").unwrap();
        assert_eq!(r.kind(), "manifest");
        match r {
            Route::Oci {
                name,
                ns: None,
                op: OciOp::Manifest(Reference::Tag(t)),
            } => {
                assert_eq!((name.as_str(), t.as_str()), ("metallb/metallb", "0.14.8"));
            }
            other => panic!("{other:?}"),
        }
        // a repository may itself be called "manifests"
        let r = oci("/v2/up/manifests/manifests/v1").unwrap();
        assert!(matches!(r, Route::Oci { name, .. } if name.as_str() == "up/manifests"));
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(oci(&format!("/v2/a/b/c/blobs/{d}")).unwrap().kind(), "blob");
        let r = parse("GET", "/v2/a/b/tags/list", Some("n=2&last=1.0.0")).unwrap();
        assert_eq!(
            r,
            Route::Oci {
                name: "a/b".parse().unwrap(),
                ns: None,
                op: OciOp::Tags {
                    n: Some(2),
                    last: Some("1.0.0".into())
                }
            }
        );
        // containerd mirror routing
        let r = parse(
            "GET",
            "/v2/helm/chartmuseum/manifests/latest",
            Some("ns=ghcr.io"),
        )
        .unwrap();
        assert!(matches!(r, Route::Oci { name, ns: Some(ns), .. }
            if name.as_str() == "helm/chartmuseum" && ns == "ghcr.io"));
        let r = parse(
            "GET",
            &format!("/v2/a/b/referrers/{d}"),
            Some("artifactType=application%2Fx"),
        )
        .unwrap();
        assert!(
            matches!(r, Route::Oci { op: OciOp::Referrers(_, Some(q)), .. }
            if q == "artifactType=application%2Fx")
        );
    }

    #[test]
    fn bad_oci_input_gets_the_right_kind() {
        let kind = |p: &str| oci(p).unwrap_err().kind();
        assert_eq!(
            kind("/v2/a/b/manifests/sha256:totallywrong"),
            Kind::ManifestUnknown
        );
        assert_eq!(kind("/v2/a/b/blobs/notadigest"), Kind::DigestInvalid);
        assert_eq!(kind("/v2/a/B/manifests/1"), Kind::NameInvalid);
        assert_eq!(kind("/v2/a/../b/manifests/1"), Kind::NameInvalid);
        assert_eq!(kind("/v2/a%2fb/c/manifests/1"), Kind::NameInvalid);
        assert_eq!(kind("/v2/a/b/manifests/bad+tag"), Kind::ManifestUnknown);
        assert_eq!(kind("/v2/a/b/whatever"), Kind::NotFound);
        assert_eq!(
            parse("POST", "/v2/a/b/blobs/uploads/", None)
                .unwrap_err()
                .kind(),
            Kind::Unsupported
        );
        assert_eq!(
            parse("GET", "/v2/a/b/tags/list", Some("n=x"))
                .unwrap_err()
                .kind(),
            Kind::BadRequest
        );
    }

    #[test]
    fn mirror_routes() {
        assert_eq!(
            parse("GET", "/metallb/index.yaml", None).unwrap(),
            Route::MirrorIndex {
                upstream: "metallb".parse().unwrap(),
                repo: None
            }
        );
        assert_eq!(
            parse(
                "GET",
                "/m/-/metallb/1.0.0%2Bb/metallb-1.0.0+b.tgz.prov",
                None
            )
            .unwrap(),
            Route::MirrorArchive {
                upstream: "m".parse().unwrap(),
                repo: None,
                chart: "metallb".into(),
                version: "1.0.0+b".into(),
                prov: true
            }
        );
        assert_eq!(
            parse("GET", "/ghcr/stefanprodan/charts/podinfo/index.yaml", None).unwrap(),
            Route::MirrorIndex {
                upstream: "ghcr".parse().unwrap(),
                repo: Some("stefanprodan/charts/podinfo".parse().unwrap())
            }
        );
        assert!(matches!(
            parse("GET", "/g/a/b/-/b/1.0.0/b-1.0.0.tgz", None).unwrap(),
            Route::MirrorArchive { repo: Some(r), .. } if r.as_str() == "a/b"
        ));
        for bad in [
            "/m/A/index.yaml",
            "/m/-/a/1/b-1.tgz",
            "/m/-/../1/..-1.tgz",
            "/m/-/a%2f/1/a%2f-1.tgz",
            "/m//index.yaml",
            "/m/x/index.yaml/",
            "/m/a/../index.yaml",
            "/",
        ] {
            assert!(parse("GET", bad, None).is_err(), "{bad}");
        }
        assert_eq!(parse("GET", "/metrics", None).unwrap(), Route::Metrics);
        assert_eq!(
            parse("DELETE", "/m/index.yaml", None).unwrap_err().kind(),
            Kind::Unsupported
        );
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any method, path and query parse to a route or an error, never a panic, and a
        /// parsed route never carries a traversal segment.
        #[test]
        fn parsing_never_panics(
            method in "(GET|HEAD|POST|PUT|DELETE|[A-Z]{1,8})",
            path in "(/v2)?(/[a-zA-Z0-9._%:+~-]{0,12}){0,8}/?",
            query in proptest::option::of("[a-z]{1,5}=[a-zA-Z0-9%:._-]{0,10}(&[a-z]{1,5}=[a-z0-9]{0,5}){0,3}"),
        ) {
            if let Ok(Route::MirrorArchive { chart, version, .. }) = parse(&method, &path, query.as_deref()) {
                prop_assert!(chart != ".." && version != ".." && !chart.contains('/'));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(path in "\\PC{0,64}") {
            let _ = parse("GET", &path, Some(&path));
        }
    }
}
