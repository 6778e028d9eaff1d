//! Typed identifiers, parsed once at the edge (route parsing, config loading) so that nothing
//! below ever splits or validates strings again. Grammar from the distribution spec.
//! Owns: `Digest`, `RepoName`, `Tag`, `UpstreamName`, and `ByteRange` (a `Range: bytes=`
//! request, resolved against a length where it is served). Calls nothing.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Kind};

/// A `sha256:<64 hex>` content digest. Only sha256 is accepted: it is what Helm, containerd and
/// every registry we mirror produce, and it keeps cache keys uniform.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// Lower-case hex, inline: a digest is cloned and compared on every request, and a fixed
    /// array costs no allocation (ordering and hashing are those of the hex string).
    hex: [u8; 64],
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_raw(Sha256::digest(bytes).into())
    }

    /// Builds a digest from a finished hasher.
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest::from_raw(h.finalize().into())
    }

    /// Builds a digest from its 32 bytes.
    pub fn from_raw(raw: [u8; 32]) -> Digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (i, b) in raw.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        Digest { hex }
    }

    /// The digest's 32 bytes (a compact key: half the hex form).
    pub fn raw(&self) -> [u8; 32] {
        fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                _ => c - b'a' + 10,
            }
        }
        let mut raw = [0u8; 32];
        for (i, pair) in self.hex.chunks_exact(2).enumerate() {
            raw[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        raw
    }

    /// Parses the bare hex form used by Helm's index.yaml `digest` field.
    pub fn from_hex(hex: &str) -> Result<Digest, Error> {
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let mut h = [0u8; 64];
            h.copy_from_slice(hex.as_bytes());
            Ok(Digest { hex: h })
        } else {
            Err(Error::new(
                Kind::DigestInvalid,
                format!("invalid sha256 hex digest {hex:?}"),
            ))
        }
    }

    /// `sha256:<hex>`, as `to_string` gives it, built without the formatting machinery (it is
    /// written on every blob and manifest answer).
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        s.push_str(self.hex());
        s
    }

    /// The strong ETag of content with this digest: `"sha256:<hex>"`.
    pub fn etag(&self) -> String {
        let mut s = String::with_capacity(73);
        s.push('"');
        s.push_str("sha256:");
        s.push_str(self.hex());
        s.push('"');
        s
    }

    pub fn hex(&self) -> &str {
        // Only ever built from ASCII hex digits.
        std::str::from_utf8(&self.hex).unwrap_or_default()
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest, Error> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Digest::from_hex(hex)
                .map_err(|_| Error::new(Kind::DigestInvalid, format!("invalid digest {s:?}"))),
            Some((alg, _)) if !alg.is_empty() && alg.len() < 32 => Err(Error::new(
                Kind::DigestInvalid,
                format!("unsupported digest algorithm {alg:?} (only sha256)"),
            )),
            _ => Err(Error::new(
                Kind::DigestInvalid,
                format!("invalid digest {s:?}"),
            )),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// Longest repository name we accept (distribution caps name + host at 255).
pub const MAX_NAME_LEN: usize = 255;

/// One path component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn is_name_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-+", followed by an alphanumeric
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A repository name below an upstream, e.g. `metallb` in `/v2/metallb/metallb/...`, or
/// `stefanprodan/charts/podinfo` for a nested OCI path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The last path component: for a Helm chart, the chart's name.
    pub fn last(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl FromStr for RepoName {
    type Err = Error;
    fn from_str(s: &str) -> Result<RepoName, Error> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(is_name_component) {
            return Err(Error::new(
                Kind::NameInvalid,
                format!("invalid repository name {s:?}"),
            ));
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Tag, Error> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(Error::new(Kind::TagInvalid, format!("invalid tag {s:?}")))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reference, Error> {
        if s.contains(':') {
            s.parse().map(Reference::Digest)
        } else {
            s.parse().map(Reference::Tag)
        }
    }
}

/// The configured name of an upstream: one name component, also the first path segment of every
/// route that reaches it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct UpstreamName(String);

impl UpstreamName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UpstreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<UpstreamName, Error> {
        if s.len() <= 64 && is_name_component(s) {
            Ok(UpstreamName(s.to_string()))
        } else {
            Err(Error::new(
                Kind::NameInvalid,
                format!(
                    "invalid upstream name {s:?}: use lowercase letters, digits, '.', '_', '-'"
                ),
            ))
        }
    }
}

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `bytes=` range, as the client wrote it (resolved against a length later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// Parses a `Range` header: a single well-formed `bytes=` range, else `None` (malformed and
/// multi-range headers are ignored and the whole body served, which RFC 9110 allows).
pub fn parse_range_header(h: &str) -> Option<ByteRange> {
    let spec = h.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    // Digits only: `u64::from_str` would take `+1`, which is not a byte position.
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (false, false) => {
            let (s, e) = (num(a)?, num(b)?);
            (s <= e).then_some(ByteRange::FromTo(s, e))
        }
        (false, true) => Some(ByteRange::From(num(a)?)),
        (true, false) => Some(ByteRange::Suffix(num(b)?)),
        (true, true) => None,
    }
}

impl ByteRange {
    /// The byte span `start..end` this range selects of `len` bytes, or `None` when it is
    /// unsatisfiable (starts at or past the end, or asks for the last zero bytes).
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        let (start, last) = match self {
            ByteRange::FromTo(s, e) => (s, e.min(len.saturating_sub(1))),
            ByteRange::From(s) => (s, len.saturating_sub(1)),
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => (len.saturating_sub(n), len.saturating_sub(1)),
        };
        (len > 0 && start < len).then_some((start, last + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(d.hex(), "a".repeat(64));
        assert_eq!(d.text(), d.to_string());
        assert_eq!(d.etag(), format!("\"{d}\""));
        for bad in [
            "sha256:totallywrong",
            "sha256:",
            "sha256",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha512:{}", "a".repeat(128)),
            "",
        ] {
            let e = bad.parse::<Digest>().unwrap_err();
            assert_eq!(e.kind(), Kind::DigestInvalid, "{bad}");
        }
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // The 32-byte form is the hash itself, and gives the same digest back.
        for data in [&b""[..], b"a", b"chartbridge"] {
            use sha2::Digest as _;
            let d = Digest::of(data);
            let raw: [u8; 32] = Sha256::digest(data).into();
            assert_eq!(d.raw(), raw);
            assert_eq!(Digest::from_raw(d.raw()), d);
        }
    }

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "a", "metallb", "a.b", "a_b", "a__b", "a---b", "a/b/c", "x9/y-z.w",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "..", "a/../b", "a%2fb",
            "a b", "é",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("x".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["latest", "1.2.3", "v1.2.3_build.1", "_x", "A-b.c"] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "1.2.3+build", "a/b", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }
}
