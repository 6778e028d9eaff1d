//! The SSRF boundary. Chart URLs inside an upstream index may point anywhere; chartbridge only
//! dials the upstream's own host, hosts its config allows (`allow_hosts`, for CDNs), and never a
//! private, loopback or link-local address unless the upstream's own URL is one (configured on
//! purpose) or `allow_private: true` says so. Checked on the URL before a request, on every
//! redirect, and on the addresses DNS returns (so a public name resolving to 10.x is refused).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use url::Url;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Guard {
    /// The configured upstream's host: always allowed, private or not.
    own_host: String,
    /// Further hosts chart URLs and redirects may reach: exact names or `*.suffix`.
    allow_hosts: Vec<String>,
    allow_private: bool,
    /// Whether any host may be dialled (OCI registries redirect blobs to arbitrary CDNs); the
    /// private-address rule still holds.
    any_host: bool,
}

/// Whether an address is outside the public internet: loopback, private, link-local,
/// unspecified, CGNAT, unique-local and the like.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

impl Guard {
    pub fn new(
        upstream: &Url,
        allow_hosts: &[String],
        allow_private: bool,
        any_host: bool,
    ) -> Guard {
        Guard {
            own_host: upstream.host_str().unwrap_or_default().to_ascii_lowercase(),
            allow_hosts: allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allow_private,
            any_host,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.any_host
            || host == self.own_host
            || self.allow_hosts.iter().any(|a| match a.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => *a == host,
            })
    }

    /// Checks a URL's host before dialling it.
    pub fn check_url(&self, url: &Url) -> Result<()> {
        let host = url.host_str().unwrap_or_default();
        if !self.host_allowed(host) {
            return Err(Error::upstream_invalid(format!(
                "refusing to fetch from {host}: not this upstream's host and not in its allow_hosts"
            )));
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check_ip(host, ip)?;
        }
        Ok(())
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<()> {
        if is_private(ip) && !self.allow_private && !host.eq_ignore_ascii_case(&self.own_host) {
            return Err(Error::upstream_invalid(format!(
                "refusing to dial {host} ({ip}): a private, loopback or link-local address \
                 (set allow_private: true on the upstream if that is intended)"
            )));
        }
        Ok(())
    }

    /// The redirect policy: at most 10 hops, each to an allowed host.
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e.message().to_string()),
            }
        })
    }
}

/// DNS resolution that drops private addresses for hosts other than the upstream's own.
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| guard.check_ip(&host, a.ip()).is_ok())
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                let e = guard
                    .check_ip(&host, addrs[0].ip())
                    .expect_err("a refused address");
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for p in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(p.parse().unwrap()), "{p}");
        }
        for p in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(!is_private(p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn hosts_and_literals() {
        let up = Url::parse("https://charts.example.com/repo/").unwrap();
        let g = Guard::new(
            &up,
            &["github.com".into(), "*.githubusercontent.com".into()],
            false,
            false,
        );
        let ok = |u: &str| g.check_url(&Url::parse(u).unwrap()).is_ok();
        assert!(ok("https://charts.example.com/a.tgz"));
        assert!(ok("https://github.com/x/releases/a.tgz"));
        assert!(ok("https://objects.githubusercontent.com/a"));
        assert!(!ok("https://evil.example.net/a.tgz"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
        // the upstream's own private address is allowed: it was configured on purpose
        let local = Guard::new(
            &Url::parse("http://127.0.0.1:8080/").unwrap(),
            &[],
            false,
            false,
        );
        assert!(local
            .check_url(&Url::parse("http://127.0.0.1:9999/x.tgz").unwrap())
            .is_ok());
        assert!(local
            .check_url(&Url::parse("http://127.0.0.2/x.tgz").unwrap())
            .is_err());
        let lenient = Guard::new(&up, &["10.0.0.5".into()], true, false);
        assert!(lenient
            .check_url(&Url::parse("http://10.0.0.5/x.tgz").unwrap())
            .is_ok());
    }
}
