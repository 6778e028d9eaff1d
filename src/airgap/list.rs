//! The warm list (`warm.yaml`, or `warm:` in the configuration): what to fetch before the
//! network goes away. Parsed strictly (an unknown key is refused with its name and line, like
//! the configuration), and the pure selections it implies: which chart versions a selector
//! names, which tags, which platforms. No I/O.

use serde::Deserialize;

use crate::convert::version;

/// The file as written. Documented in `config/warm.example.yaml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmList {
    /// Items fetched at once. Default 4.
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub upstreams: Vec<WarmUpstream>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmUpstream {
    /// A configured upstream's name.
    pub name: String,
    /// Charts: of a helm upstream by chart name, of an OCI upstream by repository.
    #[serde(default)]
    pub charts: Vec<WarmChart>,
    /// Images of an OCI upstream, by repository.
    #[serde(default)]
    pub images: Vec<WarmImage>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmChart {
    pub chart: String,
    /// An exact version, a range (`>=1.2 <2`, `^1.2`, `~1.2`, `1.x`, `a || b`), or `latest`.
    pub version: Option<String>,
    /// The N newest stable versions.
    pub newest: Option<usize>,
    /// Also warm the images the chart lists in its `artifacthub.io/images` annotation.
    #[serde(default)]
    pub images: bool,
    /// Platforms of those images (`linux/amd64`, ..., or `all`). Default all.
    #[serde(default)]
    pub platforms: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmImage {
    pub repository: String,
    /// Exact tags, ranges over semver tags, or `latest`.
    pub tags: Vec<String>,
    /// `linux/amd64`, `linux/arm64/v8`, ..., or `all`. Default all.
    #[serde(default)]
    pub platforms: Vec<String>,
}

impl WarmList {
    /// Parses a warm list; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<WarmList, String> {
        let list: WarmList = serde_saphyr::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        list.check().map_err(|e| format!("{origin}: {e}"))?;
        Ok(list)
    }

    /// Checks what the types cannot: one selector per chart, valid selectors and platforms.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency == Some(0) {
            return Err("concurrency: must be at least 1".into());
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            for (j, c) in u.charts.iter().enumerate() {
                let at = format!("upstreams[{i}].charts[{j}]");
                Selector::of_chart(c).map_err(|e| format!("{at}: {e}"))?;
                for p in &c.platforms {
                    Platform::parse(p).map_err(|e| format!("{at}.platforms: {e}"))?;
                }
            }
            for (j, im) in u.images.iter().enumerate() {
                let at = format!("upstreams[{i}].images[{j}]");
                if im.tags.is_empty() {
                    return Err(format!("{at}.tags: name at least one tag"));
                }
                for t in &im.tags {
                    Selector::parse(t).map_err(|e| format!("{at}.tags: {e}"))?;
                }
                for p in &im.platforms {
                    Platform::parse(p).map_err(|e| format!("{at}.platforms: {e}"))?;
                }
            }
        }
        Ok(())
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(4).max(1)
    }
}

/// Which versions (or tags) an entry names.
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// One version or tag, as written (a leading `v` may be added or dropped to match).
    Exact(String),
    /// A semver range, as Helm writes them.
    Range(Vec<semver::VersionReq>),
    /// The highest stable version.
    Latest,
    /// The N highest stable versions.
    Newest(usize),
}

impl Selector {
    fn of_chart(c: &WarmChart) -> Result<Selector, String> {
        match (&c.version, c.newest) {
            (Some(v), None) => Selector::parse(v),
            (None, Some(0)) => Err("newest: must be at least 1".into()),
            (None, Some(n)) => Ok(Selector::Newest(n)),
            (None, None) => {
                Err("give version (an exact version, a range or latest) or newest: N".into())
            }
            (Some(_), Some(_)) => Err("give version or newest, not both".into()),
        }
    }

    /// `latest`, an exact version or tag, or a range.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty version".into());
        }
        if s == version::LATEST {
            return Ok(Selector::Latest);
        }
        let ranged = s.contains(['<', '>', '=', '^', '~', '*', '|', ',', ' '])
            || s.split('.').any(|p| p == "x" || p == "X");
        if !ranged {
            return Ok(Selector::Exact(s.to_string()));
        }
        let mut alternatives = Vec::new();
        for alt in s.split("||") {
            alternatives.push(masterminds_range(alt).map_err(|e| format!("{s:?}: {e}"))?);
        }
        Ok(Selector::Range(alternatives))
    }

    /// The chart versions of an entry (as the index spells them) this selector names, newest
    /// first.
    pub fn versions<'a>(&self, available: &[&'a str]) -> Vec<&'a str> {
        match self {
            Selector::Exact(want) => {
                version::resolve_tag(available, &version::tag_for_version(want))
                    .into_iter()
                    .collect()
            }
            Selector::Latest => version::highest_stable(available.iter().copied())
                .into_iter()
                .collect(),
            Selector::Newest(n) => {
                let stable: Vec<String> = available
                    .iter()
                    .filter(|v| version::parse_lenient(v).is_some_and(|p| p.pre.is_empty()))
                    .map(|v| v.to_string())
                    .collect();
                let newest = version::newest_version_tags(&stable, *n);
                available
                    .iter()
                    .copied()
                    .filter(|v| newest.contains(v))
                    .collect()
            }
            Selector::Range(reqs) => {
                let owned: Vec<String> = available.iter().map(|v| v.to_string()).collect();
                let mut picked: Vec<&'a str> = version::newest_version_tags(&owned, usize::MAX)
                    .into_iter()
                    .filter_map(|t| available.iter().copied().find(|v| *v == t))
                    .filter(|v| {
                        version::parse_lenient(v)
                            .is_some_and(|p| reqs.iter().any(|r| r.matches(&p)))
                    })
                    .collect();
                picked.dedup();
                picked
            }
        }
    }
}

/// Masterminds/semver constraints (`>=1.2 <2`, `^1.2`, `~1.2.3`, `1.x`, `1.2 - 1.4`, `v` prefixes)
/// as a Rust `VersionReq` (comparators joined by commas).
fn masterminds_range(s: &str) -> Result<semver::VersionReq, String> {
    let tokens: Vec<&str> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // a hyphen range: `1.2 - 1.4` means >=1.2, <=1.4
        if i + 2 < tokens.len() && tokens[i + 1] == "-" {
            parts.push(format!(">={}", bare(tokens[i])));
            parts.push(format!("<={}", bare(tokens[i + 2])));
            i += 3;
            continue;
        }
        let t = tokens[i];
        let split = t
            .find(|c: char| c.is_ascii_digit() || c == 'v' || c == 'x' || c == 'X' || c == '*')
            .unwrap_or(t.len());
        let (op, v) = t.split_at(split);
        let op = match op {
            "~>" => "~",
            "==" => "=",
            o => o,
        };
        if v.is_empty() && op.is_empty() {
            return Err(format!("{t:?} is not a version constraint"));
        }
        parts.push(format!("{op}{}", bare(v)));
        i += 1;
    }
    if parts.is_empty() {
        return Err("an empty range".into());
    }
    semver::VersionReq::parse(&parts.join(", ")).map_err(|e| e.to_string())
}

fn bare(v: &str) -> &str {
    v.strip_prefix('v').unwrap_or(v)
}

/// A platform an image index entry may be kept for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`; `all` is `None` (every platform).
    pub fn parse(s: &str) -> Result<Option<Platform>, String> {
        if s == "all" {
            return Ok(None);
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Some(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            })),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Some(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                }))
            }
            _ => Err(format!("{s:?} is not os/architecture[/variant] or all")),
        }
    }

    /// Whether an index entry's platform is one of `wanted` (empty or `all`: every one).
    pub fn wanted(wanted: &[String], os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let list: Vec<Option<Platform>> = wanted
            .iter()
            .filter_map(|w| Platform::parse(w).ok())
            .collect();
        if list.is_empty() || list.iter().any(Option::is_none) {
            return true;
        }
        list.iter().flatten().any(|p| {
            p.os == os
                && p.architecture == architecture
                && (p.variant.is_none() || p.variant.as_deref() == variant)
        })
    }
}

/// One image a chart declares in its `artifacthub.io/images` annotation (a YAML list of
/// `{name, image, whitelisted}`): the image references.
pub fn chart_images(annotation: &str) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Entry {
        image: String,
    }
    let entries: Vec<Entry> =
        serde_saphyr::from_str(annotation).map_err(|e| format!("artifacthub.io/images: {e}"))?;
    Ok(entries.into_iter().map(|e| e.image).collect())
}

/// An image reference (`quay.io/metallb/controller:v0.14.8`, `nginx:1.25`,
/// `ghcr.io/x/y@sha256:...`) split into registry host, repository and tag or digest. A name
/// without a registry is Docker Hub's (`docker.io`).
pub fn split_image(image: &str) -> Result<(String, String, String), String> {
    let bad = || format!("{image:?} is not an image reference");
    // `name:tag@digest` pins the digest; the tag is only a label then
    let untag = |n: &str| match n.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (n.to_string(), version::LATEST.to_string()),
    };
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (untag(n).0, d.to_string()),
        None => untag(image),
    };
    let (host, repo) = match name.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
            (h.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), name.clone()),
    };
    // Docker Hub's official images live under library/
    let repo = if matches!(host.as_str(), "docker.io" | "index.docker.io") && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    if repo.is_empty() || reference.is_empty() {
        return Err(bad());
    }
    Ok((host, repo, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let list = WarmList::from_yaml(
            include_str!("../../config/warm.example.yaml"),
            "warm.example.yaml",
        )
        .unwrap();
        assert_eq!(list.upstreams.len(), 2);
        assert!(list.upstreams[0].charts[1].images);
    }

    const VERSIONS: [&str; 7] = [
        "2.0.0-rc.1",
        "1.10.0",
        "1.2.3",
        "v1.2.0",
        "1.1.0",
        "0.9.0",
        "0.14.8",
    ];

    fn pick(sel: &str) -> Vec<&'static str> {
        Selector::parse(sel).unwrap().versions(&VERSIONS)
    }

    #[test]
    fn selectors_name_the_versions_helm_would() {
        assert_eq!(pick("latest"), vec!["1.10.0"]);
        assert_eq!(pick("1.2.3"), vec!["1.2.3"]);
        assert_eq!(pick("1.2.0"), vec!["v1.2.0"], "the v prefix is tolerated");
        assert!(pick("3.0.0").is_empty());
        assert_eq!(pick(">=1.2 <2"), vec!["1.10.0", "1.2.3", "v1.2.0"]);
        assert_eq!(pick(">=1.2, <2"), vec!["1.10.0", "1.2.3", "v1.2.0"]);
        assert_eq!(pick("^1.1"), vec!["1.10.0", "1.2.3", "v1.2.0", "1.1.0"]);
        assert_eq!(pick("~1.2"), vec!["1.2.3", "v1.2.0"]);
        assert_eq!(pick("1.x"), vec!["1.10.0", "1.2.3", "v1.2.0", "1.1.0"]);
        assert_eq!(pick("0.9.0 - 1.1.0"), vec!["1.1.0", "0.14.8", "0.9.0"]);
        assert_eq!(pick("<0.10 || >=1.10"), vec!["1.10.0", "0.9.0"]);
        assert_eq!(
            pick(">=2.0.0-rc.0"),
            vec!["2.0.0-rc.1"],
            "a prerelease range names prereleases"
        );
        assert_eq!(
            Selector::Newest(2).versions(&VERSIONS),
            vec!["1.10.0", "1.2.3"],
            "newest stable, in index order"
        );
        assert!(Selector::parse(">=").is_err());
    }

    #[test]
    fn warm_lists_are_strict_and_explained() {
        let ok = "concurrency: 2\nupstreams:\n  - name: metallb\n    charts:\n      - {chart: metallb, version: \">=0.13 <0.15\", images: true}\n      - {chart: metallb, newest: 2}\n  - name: ghcr\n    images:\n      - {repository: helm/chartmuseum, tags: [latest, v0.16.2], platforms: [linux/amd64]}\n";
        let l = WarmList::from_yaml(ok, "w.yaml").unwrap();
        assert_eq!(l.concurrency(), 2);
        assert_eq!(l.upstreams[1].images[0].platforms, vec!["linux/amd64"]);
        for (bad, needle) in [
            ("upstreams:\n  - name: a\n    chartz: []\n", "chartz"),
            ("upstreams:\n  - name: a\n    charts:\n      - {chart: x}\n", "give version"),
            (
                "upstreams:\n  - name: a\n    charts:\n      - {chart: x, version: 1.0.0, newest: 1}\n",
                "not both",
            ),
            (
                "upstreams:\n  - name: a\n    images:\n      - {repository: x, tags: [v1], platforms: [linux]}\n",
                "os/architecture",
            ),
            ("upstreams:\n  - name: a\n    images:\n      - {repository: x, tags: []}\n", "at least one"),
        ] {
            let e = WarmList::from_yaml(bad, "w.yaml").unwrap_err();
            assert!(e.contains(needle), "{bad} -> {e}");
        }
        let e =
            WarmList::from_yaml("upstreams:\n  - name: a\n    chartz: []\n", "w.yaml").unwrap_err();
        assert!(e.contains('3'), "the line is named: {e}");
    }

    #[test]
    fn platforms_and_image_references() {
        let amd = vec!["linux/amd64".to_string()];
        assert!(Platform::wanted(&amd, "linux", "amd64", None));
        assert!(!Platform::wanted(&amd, "linux", "arm64", Some("v8")));
        assert!(Platform::wanted(&[], "linux", "arm64", None));
        assert!(Platform::wanted(&["all".into()], "windows", "amd64", None));
        assert_eq!(
            split_image("quay.io/metallb/controller:v0.14.8").unwrap(),
            (
                "quay.io".into(),
                "metallb/controller".into(),
                "v0.14.8".into()
            )
        );
        assert_eq!(
            split_image("nginx").unwrap(),
            ("docker.io".into(), "library/nginx".into(), "latest".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/test/app:v1").unwrap(),
            ("127.0.0.1:5000".into(), "test/app".into(), "v1".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(split_image(&format!("ghcr.io/x/y@{d}")).unwrap().2, d);
        assert_eq!(
            split_image(&format!("bitnami/redis:7.2@{d}")).unwrap(),
            ("docker.io".into(), "bitnami/redis".into(), d.clone())
        );
        assert_eq!(
            split_image("docker.io/nginx:1.25").unwrap().1,
            "library/nginx",
            "an official image named with its registry"
        );
        let images = chart_images("- name: controller\n  image: quay.io/metallb/controller:v0.14.8\n- name: speaker\n  image: quay.io/metallb/speaker:v0.14.8\n  whitelisted: true\n").unwrap();
        assert_eq!(images.len(), 2);
    }
}
