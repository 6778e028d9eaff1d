//! The SSRF boundary. Chart URLs inside an upstream index, `oci://` references and redirects
//! may point anywhere; chartbridge dials:
//! - the upstream's own host on its own port (private or not: it was configured on purpose);
//! - with `allow_hosts` empty (the default), any other host on ports 80 and 443, which is where
//!   chart-releaser's GitHub release assets, registries' CDNs and Bitnami's `oci://` URLs live;
//! - with `allow_hosts` set, only the hosts it names (`host`, `*.suffix`, with `:port` to allow
//!   a port other than 80 and 443);
//! - never a private, loopback or link-local address of a host other than the upstream's own,
//!   unless `allow_private: true`; never a URL carrying `user:pass@`.
//!
//! Checked on the URL before a request, on every redirect, and on the addresses DNS returns
//! (so a public name resolving to 10.x is refused). A refusal names the host and the key that
//! would allow it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use url::Url;

use crate::error::{Error, Result};

/// One `allow_hosts` entry: an exact host or `*.suffix`, and a port when it names one.
#[derive(Clone, Debug)]
struct Allowed {
    host: String,
    port: Option<u16>,
}

impl Allowed {
    fn parse(entry: &str) -> Allowed {
        let e = entry.trim().to_ascii_lowercase();
        // `[v6]:port`, `host:port`, or a bare host (an IPv6 literal without a port has colons)
        if let Some(rest) = e.strip_prefix('[') {
            if let Some((h, tail)) = rest.split_once(']') {
                let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
                return Allowed {
                    host: h.to_string(),
                    port,
                };
            }
        }
        match e.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => match p.parse() {
                Ok(port) => Allowed {
                    host: h.to_string(),
                    port: Some(port),
                },
                Err(_) => Allowed {
                    host: e,
                    port: None,
                },
            },
            _ => Allowed {
                host: e,
                port: None,
            },
        }
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        };
        host_ok
            && match self.port {
                Some(p) => p == port,
                None => is_web_port(port),
            }
    }
}

fn is_web_port(port: u16) -> bool {
    port == 80 || port == 443
}

#[derive(Clone, Debug)]
pub struct Guard {
    /// The configured upstream's host and port: always allowed, private or not.
    own_host: String,
    own_port: u16,
    /// When not empty, the only other hosts that may be dialled.
    allow_hosts: Vec<Allowed>,
    allow_private: bool,
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

fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl Guard {
    pub fn new(upstream: &Url, allow_hosts: &[String], allow_private: bool) -> Guard {
        Guard {
            own_host: bare(upstream.host_str().unwrap_or_default()),
            own_port: upstream.port_or_known_default().unwrap_or(443),
            allow_hosts: allow_hosts.iter().map(|h| Allowed::parse(h)).collect(),
            allow_private,
        }
    }

    /// Checks a URL before dialling it: credentials, host, port, and a literal address.
    pub fn check_url(&self, url: &Url) -> Result<()> {
        let host = bare(url.host_str().unwrap_or_default());
        let port = url.port_or_known_default().unwrap_or(0);
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::upstream_invalid(format!(
                "refusing {host}: URLs carrying credentials (user:pass@) are never fetched"
            )));
        }
        let own = host == self.own_host && port == self.own_port;
        if !own {
            if host == self.own_host && !self.allow_hosts.iter().any(|a| a.matches(&host, port)) {
                return Err(Error::upstream_invalid(format!(
                    "refusing {host}:{port}: only port {} of the upstream's own host is \
                     allowed; name {host}:{port} in its allow_hosts to allow it",
                    self.own_port
                )));
            }
            if self.allow_hosts.is_empty() {
                if !is_web_port(port) {
                    return Err(Error::upstream_invalid(format!(
                        "refusing {host}:{port}: other hosts are reached on ports 80 and 443 \
                         only; name {host}:{port} in the upstream's allow_hosts to allow it"
                    )));
                }
            } else if !self.allow_hosts.iter().any(|a| a.matches(&host, port)) {
                return Err(Error::upstream_invalid(format!(
                    "refusing {host}:{port}: not this upstream's host and not in its allow_hosts"
                )));
            }
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(&host, ip)?;
        }
        Ok(())
    }

    /// Checks a registry's token realm: as Helm does, the registry's own host is trusted on
    /// any port (a realm is where the registry itself sends its clients); any other host
    /// passes `check_url`.
    pub fn check_realm(&self, url: &Url) -> Result<()> {
        let host = bare(url.host_str().unwrap_or_default());
        if host == self.own_host && url.username().is_empty() && url.password().is_none() {
            return Ok(());
        }
        self.check_url(url)
    }

    /// Refuses a private address of any host but the upstream's own (whose port `check_url`
    /// has pinned), unless `allow_private`.
    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<()> {
        if is_private(ip) && !self.allow_private && bare(host) != self.own_host {
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
    fn hosts_ports_and_literals() {
        let up = Url::parse("https://charts.example.com/repo/").unwrap();
        let ok = |g: &Guard, u: &str| g.check_url(&Url::parse(u).unwrap());
        // default: any public host on 80/443
        let open = Guard::new(&up, &[], false);
        assert!(ok(&open, "https://charts.example.com/a.tgz").is_ok());
        assert!(ok(&open, "https://github.com/x/releases/a.tgz").is_ok());
        assert!(ok(&open, "http://objects.githubusercontent.com/a").is_ok());
        assert!(ok(&open, "https://1.1.1.1/a").is_ok());
        let e = ok(&open, "https://evil.example.net:8443/a").unwrap_err();
        assert!(e.message().contains("allow_hosts"), "{e}");
        assert!(ok(&open, "http://169.254.169.254/latest/meta-data").is_err());
        assert!(ok(&open, "http://[::1]/x").is_err());
        // allow_hosts narrows, and may name ports
        let g = Guard::new(
            &up,
            &[
                "github.com".into(),
                "*.githubusercontent.com".into(),
                "mirror.example.org:8080".into(),
            ],
            false,
        );
        assert!(ok(&g, "https://charts.example.com/a.tgz").is_ok());
        assert!(ok(&g, "https://github.com/x/releases/a.tgz").is_ok());
        assert!(ok(&g, "https://objects.githubusercontent.com/a").is_ok());
        assert!(ok(&g, "http://mirror.example.org:8080/a").is_ok());
        assert!(ok(&g, "http://mirror.example.org/a").is_err());
        assert!(ok(&g, "https://github.com:8443/a").is_err());
        assert!(ok(&g, "https://evil.example.net/a.tgz").is_err());
        let lenient = Guard::new(&up, &["10.0.0.5".into()], true);
        assert!(ok(&lenient, "http://10.0.0.5/x.tgz").is_ok());
    }

    /// Regression (issue 15, finding 6): the upstream's own host is allowed on its own port
    /// only, and URLs with credentials are never fetched.
    #[test]
    fn the_upstreams_own_host_is_pinned_to_its_port_and_userinfo_is_refused() {
        let local = Guard::new(&Url::parse("http://127.0.0.1:8080/").unwrap(), &[], false);
        let ok = |g: &Guard, u: &str| g.check_url(&Url::parse(u).unwrap());
        assert!(ok(&local, "http://127.0.0.1:8080/x.tgz").is_ok());
        let e = ok(&local, "http://127.0.0.1:9999/x.tgz").unwrap_err();
        assert!(e.message().contains("allow_hosts"), "{e}");
        assert!(
            ok(&local, "http://127.0.0.1/x.tgz").is_err(),
            "port 80 of a loopback"
        );
        assert!(ok(&local, "http://127.0.0.2:8080/x.tgz").is_err());
        let named = Guard::new(
            &Url::parse("http://127.0.0.1:8080/").unwrap(),
            &["127.0.0.1:9999".into()],
            false,
        );
        assert!(ok(&named, "http://127.0.0.1:9999/x.tgz").is_ok());
        let up = Guard::new(
            &Url::parse("https://charts.example.com/").unwrap(),
            &[],
            false,
        );
        let e = ok(&up, "https://user:pw@charts.example.com/a.tgz").unwrap_err();
        assert!(e.message().contains("credentials"), "{e}");
        assert!(ok(&up, "https://token@github.com/a.tgz").is_err());
    }
}
