//! Chart versions and OCI tags: Helm's lenient semver, the `+` <-> `_` tag mapping, tag ->
//! version resolution (with `v`-prefix tolerance) and the synthesised `latest`.
//! Pure functions over strings (the `semver` crate for ordering); no I/O.

use std::cmp::Ordering;

use semver::{BuildMetadata, Prerelease, Version};

/// The OCI tag for a chart version: OCI tags may not contain `+`, so Helm writes `_`.
/// This is the only place that mapping lives.
pub fn tag_for_version(version: &str) -> String {
    version.replace('+', "_")
}

/// Parses a version the way Masterminds/semver's `NewVersion` does: optional `v` prefix,
/// one to three numeric parts (`1.2` is 1.2.0), leading zeros tolerated, optional prerelease and
/// build metadata.
pub fn parse_lenient(s: &str) -> Option<Version> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let (rest, build) = match s.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let mut nums = [0u64; 3];
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nums[i] = p.parse().ok()?;
    }
    let pre = match pre {
        Some("") => return None,
        Some(p) => Prerelease::new(p).ok()?,
        None => Prerelease::EMPTY,
    };
    let build = match build {
        Some("") => return None,
        Some(b) => BuildMetadata::new(b).ok()?,
        None => BuildMetadata::EMPTY,
    };
    Some(Version {
        major: nums[0],
        minor: nums[1],
        patch: nums[2],
        pre,
        build,
    })
}

/// Semver precedence, ignoring build metadata, with the original string as a deterministic
/// tie-breaker (so `1.0.0+a` and `1.0.0+b` always pick the same winner).
fn precedence(a: (&Version, &str), b: (&Version, &str)) -> Ordering {
    a.0.cmp_precedence(b.0).then_with(|| a.1.cmp(b.1))
}

/// The highest stable (non-prerelease) version among `versions`, by Helm's lenient parsing.
pub fn highest_stable<'a, I>(versions: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    versions
        .into_iter()
        .filter_map(|v| parse_lenient(v).map(|p| (p, v)))
        .filter(|(p, _)| p.pre.is_empty())
        .max_by(|a, b| precedence((&a.0, a.1), (&b.0, b.1)))
        .map(|(_, v)| v)
}

/// `versions` newest first by semver precedence (Helm's lenient parsing; `_` read as `+`),
/// with what does not parse after them, in their order.
pub fn newest_first<'a>(versions: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let (mut parsed, rest): (Vec<_>, Vec<_>) = versions
        .into_iter()
        .map(|v| (parse_lenient(&v.replace('_', "+")), v))
        .partition(|(p, _)| p.is_some());
    parsed.sort_by(|a, b| {
        precedence(
            (b.0.as_ref().expect("parsed"), b.1),
            (a.0.as_ref().expect("parsed"), a.1),
        )
    });
    parsed.into_iter().chain(rest).map(|(_, v)| v).collect()
}

/// The tags of `tags` that name chart versions (semver once `_` is read as `+`; not `latest`),
/// newest first, at most `max`: which versions an index built from a registry lists.
pub fn newest_version_tags(tags: &[String], max: usize) -> Vec<&str> {
    let mut versions: Vec<(Version, &str)> = tags
        .iter()
        .filter(|t| t.as_str() != LATEST)
        .filter_map(|t| parse_lenient(&t.replace('_', "+")).map(|v| (v, t.as_str())))
        .collect();
    versions.sort_by(|a, b| precedence((&b.0, b.1), (&a.0, a.1)));
    versions.truncate(max);
    versions.into_iter().map(|(_, t)| t).collect()
}

/// Which floating tags an upstream offers (`float: [major, minor]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Float {
    /// `X` (or `vX`): the highest stable `X.y.z`.
    pub major: bool,
    /// `X.Y` (or `vX.Y`): the highest stable `X.Y.z`.
    pub minor: bool,
}

impl Float {
    pub fn any(self) -> bool {
        self.major || self.minor
    }
}

/// The floating tags `tags` imply, each with the tag it resolves to: for every stable
/// `X.Y.Z` tag (three numeric parts, optional `v`, build metadata as `_`), `X` and `X.Y` in the
/// same `v` style, resolving to the highest stable tag of that line. A floating tag the
/// upstream really has is never made (the upstream's own wins). Sorted by floating tag.
pub fn floating_tags(tags: &[&str], float: Float) -> std::collections::BTreeMap<String, String> {
    use std::collections::BTreeMap;
    let mut best: BTreeMap<String, (Version, &str)> = BTreeMap::new();
    if !float.any() {
        return BTreeMap::new();
    }
    for t in tags {
        let (v_style, bare) = match t.strip_prefix('v') {
            Some(rest) => ("v", rest),
            None => ("", *t),
        };
        let core = bare.split(['-', '_', '+']).next().unwrap_or_default();
        if core.split('.').count() != 3 {
            continue;
        }
        let Some(v) = parse_lenient(&t.replace('_', "+")) else {
            continue;
        };
        if !v.pre.is_empty() {
            continue;
        }
        let mut names = Vec::new();
        if float.major {
            names.push(format!("{v_style}{}", v.major));
        }
        if float.minor {
            names.push(format!("{v_style}{}.{}", v.major, v.minor));
        }
        for n in names {
            let better = match best.get(&n) {
                Some((b, bt)) => precedence((&v, t), (b, bt)) == Ordering::Greater,
                None => true,
            };
            if better {
                best.insert(n, (v.clone(), t));
            }
        }
    }
    best.into_iter()
        .filter(|(n, _)| !tags.contains(&n.as_str()))
        .map(|(n, (_, t))| (n, t.to_string()))
        .collect()
}

/// Whether `tag` has the shape of a floating tag (`X`, `X.Y`, optional `v`): only those are
/// looked up in the tag list before they are resolved.
pub fn may_float(tag: &str) -> bool {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    let parts: Vec<&str> = bare.split('.').collect();
    parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The literal tag clients use for "the newest".
pub const LATEST: &str = "latest";

/// Resolves a requested tag to one of `versions` (as the upstream spells them).
///
/// Order: an exact tag match; then `latest` as the highest stable version when no version is
/// literally named `latest`; then the same tag with the leading `v` added or removed.
pub fn resolve_tag<'a>(versions: &[&'a str], tag: &str) -> Option<&'a str> {
    if let Some(v) = versions.iter().find(|v| tag_for_version(v) == tag) {
        return Some(v);
    }
    if tag == LATEST {
        return highest_stable(versions.iter().copied());
    }
    let toggled = match tag.strip_prefix('v') {
        Some(rest) => rest.to_string(),
        None => format!("v{tag}"),
    };
    versions
        .iter()
        .find(|v| tag_for_version(v) == toggled)
        .copied()
}

/// The tag list for a set of versions: their tags, plus `latest` when it would resolve and no
/// version already produces it; sorted lexically and deduplicated as the distribution spec asks.
pub fn tag_list(versions: &[&str]) -> Vec<String> {
    let mut tags: Vec<String> = versions.iter().map(|v| tag_for_version(v)).collect();
    if !tags.iter().any(|t| t == LATEST) && highest_stable(versions.iter().copied()).is_some() {
        tags.push(LATEST.to_string());
    }
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parsing_matches_masterminds() {
        assert_eq!(parse_lenient("v1.2.3").unwrap().to_string(), "1.2.3");
        assert_eq!(parse_lenient("1.2").unwrap().to_string(), "1.2.0");
        assert_eq!(parse_lenient("1").unwrap().to_string(), "1.0.0");
        assert_eq!(parse_lenient("01.02.03").unwrap().to_string(), "1.2.3");
        assert_eq!(
            parse_lenient("1.2.3-rc.1+build.5").unwrap().to_string(),
            "1.2.3-rc.1+build.5"
        );
        for bad in ["", "v", "1.2.3.4", "a.b.c", "1..2", "latest", "1.2.3-"] {
            assert!(parse_lenient(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn versions_sort_newest_first_with_the_unparsable_last() {
        assert_eq!(
            newest_first([
                "0.9.0",
                "latest",
                "1.10.0",
                "1.2.0",
                "1.10.0-rc.1",
                "v1.9.0"
            ]),
            [
                "1.10.0",
                "1.10.0-rc.1",
                "v1.9.0",
                "1.2.0",
                "0.9.0",
                "latest"
            ]
        );
    }

    #[test]
    fn only_short_numeric_tags_may_float() {
        for t in ["1", "v1", "0.16", "v0.16"] {
            assert!(may_float(t), "{t}");
        }
        for t in ["v1.2.3", "latest", "v", "", "1.", "1.x", "v1.2-rc"] {
            assert!(!may_float(t), "{t}");
        }
    }

    #[test]
    fn floating_tags_follow_the_highest_stable_of_their_line() {
        let both = Float {
            major: true,
            minor: true,
        };
        let tags = [
            "v1.0.0",
            "v1.2.0",
            "v1.2.3",
            "v2.0.0-rc.1",
            "v2.0.0",
            "v1",
            "latest",
        ];
        let f = floating_tags(&tags, both);
        let get = |k: &str| f.get(k).map(String::as_str);
        assert_eq!(get("v1.2"), Some("v1.2.3"));
        assert_eq!(get("v1.0"), Some("v1.0.0"));
        assert_eq!(get("v2"), Some("v2.0.0"), "a prerelease never floats");
        assert_eq!(get("v2.0"), Some("v2.0.0"));
        assert_eq!(get("v1"), None, "the upstream's own v1 is not shadowed");
        assert_eq!(f.len(), 4);
        // without v, with build metadata as `_`, only the lines asked for
        let f = floating_tags(
            &["0.16.0", "0.16.2_build.1", "0.17.1", "1.2", "x.y.z"],
            Float {
                major: false,
                minor: true,
            },
        );
        assert_eq!(
            f.into_iter().collect::<Vec<_>>(),
            vec![
                ("0.16".to_string(), "0.16.2_build.1".to_string()),
                ("0.17".to_string(), "0.17.1".to_string())
            ],
            "two-part versions do not float; no majors"
        );
        assert!(floating_tags(&tags, Float::default()).is_empty());
    }

    #[test]
    fn highest_stable_skips_prereleases_and_ignores_build() {
        let vs = ["0.9.0", "v0.10.0", "0.11.0-rc.1", "0.10", "not-a-version"];
        assert_eq!(highest_stable(vs), Some("v0.10.0"));
        // 0.10 == 0.10.0 by precedence: the tie-break on the original string is deterministic.
        let vs = ["1.0.0+b", "1.0.0+a"];
        assert_eq!(highest_stable(vs), Some("1.0.0+b"));
        assert_eq!(highest_stable(["1.0.0-alpha"]), None);
    }

    #[test]
    fn newest_version_tags_keeps_the_newest_chart_versions() {
        let tags: Vec<String> = [
            "latest",
            "1.0.0",
            "sha-abc",
            "2.0.0-rc.1",
            "1.10.0",
            "1.2.0_b.1",
            "v1.9",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest_version_tags(&tags, 10),
            ["2.0.0-rc.1", "1.10.0", "v1.9", "1.2.0_b.1", "1.0.0"]
        );
        assert_eq!(newest_version_tags(&tags, 2), ["2.0.0-rc.1", "1.10.0"]);
        assert!(newest_version_tags(&tags, 0).is_empty());
    }

    #[test]
    fn tags_map_plus_to_underscore() {
        assert_eq!(tag_for_version("1.2.3+build.1"), "1.2.3_build.1");
        let vs = ["1.2.3+build.1", "v2.0.0", "3.0.0"];
        assert_eq!(resolve_tag(&vs, "1.2.3_build.1"), Some("1.2.3+build.1"));
        assert_eq!(resolve_tag(&vs, "2.0.0"), Some("v2.0.0"));
        assert_eq!(resolve_tag(&vs, "v3.0.0"), Some("3.0.0"));
        assert_eq!(resolve_tag(&vs, "latest"), Some("3.0.0"));
        assert_eq!(resolve_tag(&vs, "4.0.0"), None);
    }

    #[test]
    fn a_literal_latest_version_wins() {
        let vs = ["latest", "9.0.0"];
        assert_eq!(resolve_tag(&vs, "latest"), Some("latest"));
        assert_eq!(tag_list(&vs), vec!["9.0.0", "latest"]);
    }

    #[test]
    fn tag_list_adds_latest_only_when_it_resolves() {
        assert_eq!(
            tag_list(&["1.0.0", "0.9.0"]),
            vec!["0.9.0", "1.0.0", "latest"]
        );
        assert_eq!(tag_list(&["1.0.0-rc.1"]), vec!["1.0.0-rc.1"]);
    }
}
