//! How an upstream is reached, owned here so that `config` (which reads it from the file) and
//! `upstream` (which acts on it) need not import each other: timeouts, retries, offline mode,
//! the SSRF allowances, and registry credentials. Plain data; calls nothing.

use std::time::Duration;

/// How one upstream is talked to: timeouts, retries, and whether it may be contacted at all.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Connecting (TCP and TLS).
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub header: Duration,
    /// Longest silence while reading a body.
    pub idle: Duration,
    /// Extra attempts for an idempotent request after a connection error or a 5xx.
    pub retries: u32,
    /// Never contact the upstream: everything is answered from cache or refused.
    pub offline: bool,
    /// When not empty, the only hosts besides the upstream's own that chart URLs and redirects
    /// may reach (`host`, `*.suffix`, optionally `:port`); when empty, any public host on
    /// ports 80 and 443.
    pub allow_hosts: Vec<String>,
    /// Allow dialling private, loopback and link-local addresses of other hosts.
    pub allow_private: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            connect: Duration::from_secs(10),
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            retries: 2,
            offline: false,
            allow_hosts: Vec::new(),
            allow_private: false,
        }
    }
}

/// Registry credentials, resolved from their sources at load time.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}
