//! The domain error: a kind (what went wrong, from whose side) and a message for humans.
//! It carries no HTTP status: `http::error_response` is the one place that maps kinds to
//! statuses and OCI error codes. Owns `Error`, `Kind`, and the error for a digest mismatch.
//! Calls nothing but `ids`.

use std::fmt;

/// What went wrong. The variants group by origin: the client's request, the upstream's answer,
/// or chartbridge itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    // The client asked for something malformed or absent.
    NameInvalid,
    NameUnknown,
    TagInvalid,
    DigestInvalid,
    ManifestUnknown,
    BlobUnknown,
    /// A route outside the API (plain 404).
    NotFound,
    /// A method or operation this read-only mirror does not do (push, delete).
    Unsupported,
    /// A malformed request (query, header).
    BadRequest,
    /// Credentials are missing or wrong for a protected upstream.
    Unauthorized,
    /// Refused whoever asks (a cross-origin form post to the catalog page).
    Forbidden,
    /// This client failed to log in too often: it waits (`retry_after`) before trying again.
    TooManyAttempts,
    RangeNotSatisfiable,
    // The upstream answered badly.
    /// The upstream's bytes are wrong: digest mismatch, unparsable index, oversized body.
    UpstreamInvalid,
    /// The upstream could not be reached or answered with a server error.
    UpstreamUnavailable,
    /// The upstream rate-limits us (429); `retry_after` says for how long when it said so.
    UpstreamRateLimited,
    /// The upstream is offline by configuration and what was asked is not cached.
    UpstreamOffline,
    // chartbridge itself.
    Internal,
}

/// The cause of an error, kept whole (shared, so errors stay cheap to clone for every waiter
/// of a shared fetch).
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Clone, Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    retry_after: Option<u64>,
    /// For `RangeNotSatisfiable`: the length of what was asked for.
    full_length: Option<u64>,
    /// What caused it (an I/O or HTTP client error), for `std::error::Error::source`.
    source: Option<Source>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            retry_after: None,
            full_length: None,
            source: None,
        }
    }

    /// This error, caused by `source`.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// A `Range` outside a body of `len` bytes.
    pub fn range_not_satisfiable(len: u64) -> Error {
        Error {
            full_length: Some(len),
            ..Error::new(
                Kind::RangeNotSatisfiable,
                format!("range outside the {len} bytes"),
            )
        }
    }

    /// The body length a `RangeNotSatisfiable` answer names in `Content-Range`.
    pub fn full_length(&self) -> Option<u64> {
        self.full_length
    }

    /// Seconds the upstream asked us to wait, for a 429.
    pub fn with_retry_after(mut self, secs: Option<u64>) -> Error {
        self.retry_after = secs;
        self
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Kind::Internal, message)
    }

    pub fn upstream_invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::UpstreamInvalid, message)
    }

    pub fn upstream_unavailable(message: impl Into<String>) -> Error {
        Error::new(Kind::UpstreamUnavailable, message)
    }

    /// Whether the error is the upstream's fault (logged at warn, not error).
    pub fn is_upstream(&self) -> bool {
        matches!(
            self.kind,
            Kind::UpstreamInvalid
                | Kind::UpstreamUnavailable
                | Kind::UpstreamRateLimited
                | Kind::UpstreamOffline
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::internal(format!("I/O error: {e}")).with_source(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error for bytes that do not hash to the digest they were offered under.
pub fn digest_mismatch(expected: &crate::ids::Digest, actual: &crate::ids::Digest) -> Error {
    Error::upstream_invalid(format!(
        "digest mismatch: expected {expected}, content hashes to {actual}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_keeps_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "read-only");
        let e: Error = io.into();
        assert_eq!(e.kind(), Kind::Internal);
        let cause = std::error::Error::source(&e).expect("a source");
        assert!(cause.to_string().contains("read-only"));
        assert!(
            std::error::Error::source(&e.clone()).is_some(),
            "clones keep it"
        );
    }
}
