//! Downstream access control, per upstream: Basic credentials from an htpasswd file (bcrypt) and
//! static bearer tokens from a file, or anonymous read. A refused request is a 401 with
//! `WWW-Authenticate: Basic`, which is what `helm registry login`, Flux `dockerconfigjson`
//! secrets and containerd host credentials answer to. Credentials are never logged.
//!
//! bcrypt is slow on purpose, so it never runs on the request workers: verifications go to the
//! blocking pool, at most a few at once (`Throttle`), and a verified credential is remembered
//! for a few minutes under a keyed hash of the header (never the password). An unknown user
//! costs the same bcrypt as a known one, so timing does not tell which user names exist, and a
//! client address that keeps failing is told to wait (429) before it may try again.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Kind, Result};
use crate::ids::Digest;

/// How long a verified Basic credential is trusted without re-running bcrypt.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Failed logins from one address before it must wait.
const FREE_FAILURES: u32 = 5;
/// Longest wait imposed on an address; it doubles from 1 s with each failure past the free ones.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Access {
    /// user -> bcrypt hash
    users: HashMap<String, String>,
    /// sha256 of each accepted bearer token
    tokens: HashSet<Digest>,
    pub anonymous: bool,
    /// A bcrypt hash at the highest cost in the file, verified for unknown users.
    decoy: Option<String>,
    /// Keyed hashes of recently verified `Authorization` headers.
    verified: moka::sync::Cache<[u8; 32], ()>,
    key: [u8; 32],
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

/// Shared by every protected upstream: the bound on concurrent bcrypt runs, and the failed
/// logins per client address.
pub struct Throttle {
    slots: tokio::sync::Semaphore,
    failures: moka::sync::Cache<IpAddr, (u32, Instant)>,
    /// bcrypt verifications run (for tests and curiosity).
    runs: std::sync::atomic::AtomicU64,
}

impl Default for Throttle {
    fn default() -> Throttle {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Throttle {
            slots: tokio::sync::Semaphore::new(cpus),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(MAX_BACKOFF * 2)
                .build(),
            runs: Default::default(),
        }
    }
}

impl Throttle {
    /// Refuses an address that failed too often, for a while that grows with its failures.
    fn admit(&self, client: Option<IpAddr>) -> Result<()> {
        let Some((n, last)) = client.and_then(|c| self.failures.get(&c)) else {
            return Ok(());
        };
        if n < FREE_FAILURES {
            return Ok(());
        }
        let wait = Duration::from_secs(1u64 << (n - FREE_FAILURES).min(6)).min(MAX_BACKOFF);
        let left = wait.saturating_sub(last.elapsed());
        if left.is_zero() {
            return Ok(());
        }
        crate::metrics::auth_failure("backoff");
        Err(Error::new(
            Kind::TooManyAttempts,
            "too many failed logins from this address; wait before trying again",
        )
        .with_retry_after(Some(left.as_secs().max(1))))
    }

    fn failed(&self, client: Option<IpAddr>) {
        crate::metrics::auth_failure("invalid");
        if let Some(c) = client {
            let n = self.failures.get(&c).map_or(0, |(n, _)| n);
            self.failures
                .insert(c, (n.saturating_add(1), Instant::now()));
        }
    }

    /// One refused login for `client` (see `Access::accepts`).
    pub fn refused(&self, client: Option<IpAddr>) {
        self.failed(client);
    }

    fn succeeded(&self, client: Option<IpAddr>) {
        if let Some(c) = client {
            self.failures.invalidate(&c);
        }
    }

    /// bcrypt on the blocking pool, a bounded number at once.
    async fn bcrypt(&self, password: String, hash: String) -> bool {
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// HMAC-SHA256: the remembered-credential key, so the cache holds nothing a password can be
/// guessed from without the process's random key.
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// 32 random bytes from the kernel (a fresh key per process).
fn random_key() -> [u8; 32] {
    use std::io::Read;
    let mut k = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut k))
        .is_ok();
    if !ok {
        // No /dev/urandom: still unpredictable enough for a cache key, never a secret itself.
        let seed = format!("{:?}{}", Instant::now(), std::process::id());
        k = Sha256::digest(seed.as_bytes()).into();
    }
    k
}

/// The cost of a bcrypt hash (`$2y$12$...` -> 12).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
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
                if !hash.starts_with("$2") || bcrypt_cost(hash).is_none() {
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
        let decoy = match users.values().filter_map(|h| bcrypt_cost(h)).max() {
            Some(cost) => Some(
                bcrypt::hash("chartbridge decoy: no such user", cost.clamp(4, 31))
                    .map_err(|e| format!("cannot prepare bcrypt: {e}"))?,
            ),
            None => None,
        };
        Ok(Access {
            users,
            tokens: toks,
            anonymous,
            decoy,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
            key: random_key(),
        })
    }

    /// Whether these credentials are valid here (anonymous requests pass when allowed).
    /// `client` is the address failures are counted against.
    pub async fn check(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
        throttle: &Throttle,
    ) -> Result<()> {
        let Some(h) = authorization else {
            return if self.anonymous {
                Ok(())
            } else {
                Err(Access::refuse(None))
            };
        };
        if self.valid(h, client, throttle).await? {
            Ok(())
        } else {
            Err(Access::refuse(Some(h)))
        }
    }

    /// Whether an `Authorization` header carries credentials this upstream accepts; an error
    /// when the client must wait first.
    pub async fn valid(
        &self,
        header: &str,
        client: Option<IpAddr>,
        throttle: &Throttle,
    ) -> Result<bool> {
        let ok = self.accepts(header, client, throttle).await?;
        if !ok {
            throttle.failed(client);
        }
        Ok(ok)
    }

    /// As `valid`, but a refusal is not counted against `client`: for listings that try one
    /// header on every protected upstream (a browser holding one upstream's credentials is not
    /// failing to log in to the others). The caller counts one failure when none accepts it
    /// (`Throttle::refused`). A client that must wait still waits.
    pub async fn accepts(
        &self,
        header: &str,
        client: Option<IpAddr>,
        throttle: &Throttle,
    ) -> Result<bool> {
        let key = hmac(&self.key, header.trim().as_bytes());
        if self.verified.contains_key(&key) {
            return Ok(true);
        }
        throttle.admit(client)?;
        let ok = self.verify(header, throttle).await;
        if ok {
            self.verified.insert(key, ());
            throttle.succeeded(client);
        }
        Ok(ok)
    }

    async fn verify(&self, header: &str, throttle: &Throttle) -> bool {
        let (scheme, value) = header.trim().split_once(' ').unwrap_or(("", ""));
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => self.tokens.contains(&Digest::of(value.trim().as_bytes())),
            "basic" => {
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
                let (hash, known) = match (self.users.get(user), &self.decoy) {
                    (Some(h), _) => (h.clone(), true),
                    (None, Some(d)) => (d.clone(), false),
                    (None, None) => return false,
                };
                let ok = throttle.bcrypt(password.to_string(), hash).await;
                ok && known
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    fn load(dir: &Path, cost: u32) -> Access {
        let hash = bcrypt::hash("pw", cost).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        std::fs::write(dir.join("tokens"), "# ci\ntok-123\n").unwrap();
        Access::load(
            Some(&dir.join("htpasswd")),
            Some(&dir.join("tokens")),
            false,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn basic_bearer_and_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(dir.path(), 4);
        let t = Throttle::default();
        let ok = |h: Option<String>| {
            let (a, t) = (&a, &t);
            async move { a.check(h.as_deref(), None, t).await.is_ok() }
        };
        assert!(ok(Some(basic("alice", "pw"))).await);
        assert!(ok(Some(basic("alice", "pw"))).await, "remembered");
        assert!(!ok(Some(basic("alice", "nope"))).await);
        assert!(!ok(Some(basic("bob", "pw"))).await);
        assert!(ok(Some("Bearer tok-123".into())).await);
        assert!(ok(Some(basic("anyone", "tok-123"))).await);
        assert!(!ok(Some("Bearer tok-999".into())).await);
        assert!(!ok(None).await);
        assert!(!ok(Some("Digest x".into())).await);
        assert!(format!("{a:?}").contains("1 users"), "no secrets in Debug");
        std::fs::write(dir.path().join("plain"), "alice:secret\n").unwrap();
        assert!(Access::load(Some(&dir.path().join("plain")), None, false).is_err());
    }

    /// Regression (issue 15, finding 5): bcrypt runs off the request workers, an unknown user
    /// costs a bcrypt at the file's cost too (no user-name oracle), remembered credentials are
    /// keyed hashes, and an address that keeps failing is told to wait while others are not.
    #[tokio::test(flavor = "current_thread")]
    async fn wrong_passwords_cost_no_request_worker_and_back_off_per_address() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let a = load(dir.path(), 10);
        let t = Throttle::default();
        assert_eq!(a.decoy.as_deref().and_then(bcrypt_cost), Some(10));
        // On a one-thread runtime, a bcrypt run inline would stop every other task until it
        // ended; on the blocking pool, a ticker keeps running while one is awaited.
        let ticks = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(!a.verify(&basic("nobody", "wrong"), &t).await);
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the runtime ran during bcrypt"
        );
        ticker.abort();
        assert_eq!(
            t.runs.load(Ordering::Relaxed),
            1,
            "an unknown user costs a bcrypt"
        );
        assert!(!a.verify(&basic("alice", "wrong"), &t).await);
        assert_eq!(t.runs.load(Ordering::Relaxed), 2);

        let attacker: IpAddr = "192.0.2.7".parse().unwrap();
        let mut refused = 0;
        for _ in 0..8 {
            match a
                .check(Some(&basic("alice", "guess")), Some(attacker), &t)
                .await
            {
                Err(e) if e.kind() == Kind::TooManyAttempts => {
                    assert!(e.retry_after().is_some());
                    refused += 1;
                }
                Err(e) => assert_eq!(e.kind(), Kind::Unauthorized),
                Ok(()) => panic!("a wrong password passed"),
            }
        }
        assert_eq!(refused, 3, "five free failures, then the address waits");
        assert_eq!(
            t.runs.load(Ordering::Relaxed),
            7,
            "a waiting address costs no bcrypt"
        );
        // another address is not held back, and the right password works there
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(a
            .check(Some(&basic("alice", "pw")), Some(other), &t)
            .await
            .is_ok());
        // the remembered credential is a keyed hash, not the header or password
        let header = basic("alice", "pw");
        assert!(a.verified.contains_key(&hmac(&a.key, header.as_bytes())));
        let plain: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        assert!(!a.verified.contains_key(&plain));
    }
}
