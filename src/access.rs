//! Downstream access control, per upstream: Basic credentials from an htpasswd file (bcrypt) and
//! static bearer tokens from a file, or anonymous read. A refused request is a 401 with
//! `WWW-Authenticate: Basic`, which is what `helm registry login`, Flux `dockerconfigjson`
//! secrets and containerd host credentials answer to. Verified credentials are remembered (as a
//! hash) for a few minutes, because bcrypt is deliberately slow. Credentials are never logged.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use crate::error::{Error, Kind, Result};
use crate::ids::Digest;

/// How long a verified Basic credential is trusted without re-running bcrypt.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

pub struct Access {
    /// user -> bcrypt hash
    users: HashMap<String, String>,
    /// sha256 of each accepted bearer token
    tokens: HashSet<Digest>,
    pub anonymous: bool,
    verified: moka::sync::Cache<Digest, ()>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Access({} users, {} tokens, anonymous: {})",
            self.users.len(),
            self.tokens.len(),
            self.anonymous
        )
    }
}

impl Access {
    /// Loads the htpasswd file (`user:$2y$...` lines) and the tokens file (one token a line;
    /// `#` comments and blank lines ignored).
    pub fn load(
        htpasswd: Option<&Path>,
        tokens: Option<&Path>,
        anonymous: bool,
    ) -> std::result::Result<Access, String> {
        let mut users = HashMap::new();
        if let Some(p) = htpasswd {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{}:{}: not user:hash", p.display(), n + 1))?;
                if !hash.starts_with("$2") {
                    return Err(format!(
                        "{}:{}: only bcrypt hashes are accepted (htpasswd -B)",
                        p.display(),
                        n + 1
                    ));
                }
                users.insert(user.to_string(), hash.to_string());
            }
        }
        let mut toks = HashSet::new();
        if let Some(p) = tokens {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                toks.insert(Digest::of(line.as_bytes()));
            }
        }
        Ok(Access {
            users,
            tokens: toks,
            anonymous,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
        })
    }

    /// Whether these credentials are valid here (anonymous requests pass when allowed).
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        match authorization {
            None => self.anonymous,
            Some(h) => self.valid(h),
        }
    }

    /// Whether an `Authorization` header carries credentials this upstream accepts.
    pub fn valid(&self, header: &str) -> bool {
        let (scheme, value) = header.trim().split_once(' ').unwrap_or(("", ""));
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => self.tokens.contains(&Digest::of(value.trim().as_bytes())),
            "basic" => {
                let key = Digest::of(header.trim().as_bytes());
                if self.verified.get(&key).is_some() {
                    return true;
                }
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
                    return false;
                };
                let Ok(text) = String::from_utf8(raw) else {
                    return false;
                };
                let Some((user, password)) = text.split_once(':') else {
                    return false;
                };
                // A static token also works as a Basic password (any user name), for clients
                // that only speak Basic.
                if self.tokens.contains(&Digest::of(password.as_bytes())) {
                    return true;
                }
                let ok = self
                    .users
                    .get(user)
                    .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false));
                if ok {
                    self.verified.insert(key, ());
                }
                ok
            }
            _ => false,
        }
    }

    /// The error for a refused request.
    pub fn refuse(authorization: Option<&str>) -> Error {
        Error::new(
            Kind::Unauthorized,
            if authorization.is_some() {
                "invalid credentials"
            } else {
                "authentication required"
            },
        )
    }

    pub fn check(&self, authorization: Option<&str>) -> Result<()> {
        if self.allows(authorization) {
            Ok(())
        } else {
            Err(Access::refuse(authorization))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_bearer_and_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        std::fs::write(dir.path().join("tokens"), "# ci\ntok-123\n").unwrap();
        let a = Access::load(
            Some(&dir.path().join("htpasswd")),
            Some(&dir.path().join("tokens")),
            false,
        )
        .unwrap();
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(a.allows(Some(&basic("alice", "pw"))));
        assert!(a.allows(Some(&basic("alice", "pw"))), "remembered");
        assert!(!a.allows(Some(&basic("alice", "nope"))));
        assert!(!a.allows(Some(&basic("bob", "pw"))));
        assert!(a.allows(Some("Bearer tok-123")));
        assert!(a.allows(Some(&basic("anyone", "tok-123"))));
        assert!(!a.allows(Some("Bearer tok-999")));
        assert!(!a.allows(None));
        assert!(!a.allows(Some("Digest x")));
        assert!(format!("{a:?}").contains("1 users"), "no secrets in Debug");
        std::fs::write(dir.path().join("plain"), "alice:secret\n").unwrap();
        assert!(Access::load(Some(&dir.path().join("plain")), None, false).is_err());
    }
}
