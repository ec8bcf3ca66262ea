//! Tenant API keys: their format, their argon2id hashes, and the
//! `Authenticator` that verifies a presented key once and then from a cache.
//!
//! API keys look like `tkb_<key id>_<secret>`: a fixed prefix that leak
//! scanners can match, a 16-character public key id used for lookup, and a
//! 64-hex-character secret (32 random bytes). The database keeps only an
//! argon2id hash of the secret.
//!
//! argon2 costs ~20 ms and ~19 MiB, so it runs once per key: a verified key is
//! kept in a bounded in-memory cache together with a SHA-256 of its secret, and
//! later requests compare that digest in constant time. Revoking a key drops it
//! from this instance's cache at once and from other instances' caches through
//! the change feed (polled every 250 ms). Concurrent argon2 work is bounded by a
//! semaphore, and an unknown key id still pays one verification against a dummy
//! hash, so response time does not reveal which key ids exist.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::scope::Scopes;
use crate::store::{KeyRow, Store, StoreError};

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "tkb_";
const KEY_ID_LEN: usize = 16;
const SECRET_HEX_LEN: usize = 64;

/// An authenticated tenant API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub key_id: String,
    pub scopes: Scopes,
}

/// A presented key split into its parts. `Debug` never shows the secret.
pub struct PresentedKey<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .finish()
    }
}

/// Splits `tkb_<16 id chars>_<64 hex>`; `None` when malformed.
pub fn parse_presented(s: &str) -> Option<PresentedKey<'_>> {
    let rest = s.strip_prefix(KEY_PREFIX)?;
    // ASCII before any split at a byte index: a character straddling it
    // (the console's sign-in form takes any text) would panic the split.
    if !rest.is_ascii() || rest.len() != KEY_ID_LEN + 1 + SECRET_HEX_LEN {
        return None;
    }
    let (key_id, tail) = rest.split_at(KEY_ID_LEN);
    let secret = tail.strip_prefix('_')?;
    let id_ok = key_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (id_ok && secret_ok).then_some(PresentedKey { key_id, secret })
}

/// argon2id with OWASP's m = 7 MiB, t = 5, p = 1 (one of its equivalent
/// recommended settings; chosen over m = 19 MiB, t = 2 to keep the memory a
/// verification takes small). Verification reads the parameters stored in each
/// hash, so they can be raised later without invalidating keys.
fn hasher() -> Argon2<'static> {
    let params = Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A freshly created key: the whole key string is shown once and never again.
pub struct NewKey {
    pub key: String,
    pub row: KeyRow,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.row.key_id)
            .field("key", &"***")
            .finish()
    }
}

/// Random bytes from the OS; without them no key can be made safely, so the
/// caller fails instead of issuing a predictable one.
fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| format!("the operating system's random number generator failed: {e}"))?;
    Ok(b)
}

/// Makes a new key for `tenant`. Hashes with argon2id: call from a blocking
/// context (`spawn_blocking`), never on an async worker.
pub fn generate_key(
    tenant: &str,
    scopes: Scopes,
    name: Option<String>,
    created_by: &str,
    now_ms: i64,
) -> Result<NewKey, String> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = random_bytes::<KEY_ID_LEN>()?
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    let secret = crate::audit::chain::hex(&random_bytes::<32>()?);
    let hash = hasher()
        .hash_password(secret.as_bytes())
        .map_err(|e| format!("argon2: {e}"))?
        .to_string();
    Ok(NewKey {
        key: format!("{KEY_PREFIX}{id}_{secret}"),
        row: KeyRow {
            key_id: id,
            tenant: tenant.to_owned(),
            name,
            scopes: scopes.to_string(),
            secret_hash: hash,
            created_at_ms: now_ms,
            created_by: created_by.to_owned(),
            revoked_at_ms: None,
        },
    })
}

/// Why authentication failed. Deliberately coarse towards the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key")]
    Missing,
    #[error("malformed API key")]
    Malformed,
    #[error("unknown or revoked API key")]
    Invalid,
    #[error("authentication store unavailable")]
    Unavailable(#[source] StoreError),
    #[error("too many key verifications in progress")]
    Busy,
    /// `enter` refused: the caller's address has too many checks in flight.
    #[error("too many key verifications in progress from this address")]
    TooManyInFlight,
}

struct CachedKey {
    secret_sha256: [u8; 32],
    principal: Arc<Principal>,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for argon2: bounds both the concurrent work and the
/// memory (each verification takes ~19 MiB; on the runtime's growing blocking
/// pool, every new thread's allocator arena would keep its own copy).
struct HashPool {
    tx: tokio::sync::mpsc::Sender<HashJob>,
}

impl HashPool {
    fn new(threads: usize) -> HashPool {
        let (tx, rx) = tokio::sync::mpsc::channel::<HashJob>(1024);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(mut r) => r.blocking_recv(),
                            Err(_) => None,
                        };
                        match job {
                            Some(job) => job(),
                            None => break, // the authenticator is gone
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = ?e.to_string(), "cannot start an argon2 thread");
            }
        }
        HashPool { tx }
    }

    /// Runs `f` on the pool; `None` if the pool is saturated or gone.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .try_send(Box::new(move || {
                let _ = done.send(f());
            }))
            .ok()?;
        wait.await.ok()
    }
}

/// Verifies API keys with argon2 once, then from a bounded cache.
pub struct Authenticator {
    store: Store,
    cache: quick_cache::sync::Cache<String, Arc<CachedKey>>,
    hashers: HashPool,
    /// Single flight: requests for the same key id wait for one verification
    /// instead of each running argon2 (a cold start under load would otherwise
    /// run it once per waiting request). Sharded by key id.
    flights: [tokio::sync::Mutex<()>; 16],
    dummy_hash: String,
    /// Authentications answered from the cache, and those that were not.
    cache_hits: std::sync::atomic::AtomicU64,
    cache_misses: std::sync::atomic::AtomicU64,
    /// argon2 verifications started (real and dummy), for tests and metrics.
    verifications: std::sync::atomic::AtomicU64,
    /// Bumped by every `forget`. A verification caches its key only if no
    /// revocation landed while it ran (see `authenticate`).
    forgets: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Authenticator {
    /// Makes a new key on the fixed argon2 pool (`generate_key`), so key
    /// creation shares the pool's bound on concurrent hashes and memory with
    /// verifications; `Busy` when the pool's queue is full.
    pub async fn generate_key(
        &self,
        tenant: &str,
        scopes: Scopes,
        name: Option<String>,
        created_by: &str,
        now_ms: i64,
    ) -> Result<Result<NewKey, String>, AuthError> {
        let (tenant, by) = (tenant.to_owned(), created_by.to_owned());
        self.hashers
            .run(move || generate_key(&tenant, scopes, name, &by, now_ms))
            .await
            .ok_or(AuthError::Busy)
    }

    /// `capacity` verified keys are cached; `parallel_hashes` argon2
    /// verifications may run at once.
    pub fn new(store: Store, capacity: usize, parallel_hashes: usize) -> Authenticator {
        let dummy_hash = hasher()
            .hash_password(b"token-broker dummy secret for unknown key ids")
            .map(|h| h.to_string())
            .unwrap_or_default();
        Authenticator {
            store,
            cache: quick_cache::sync::Cache::new(capacity.max(16)),
            hashers: HashPool::new(parallel_hashes),
            flights: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            dummy_hash,
            verifications: Default::default(),
            forgets: Default::default(),
            cache_hits: Default::default(),
            cache_misses: Default::default(),
        }
    }

    /// (cache hits, cache misses) so far, for `/metrics`.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.cache_hits.load(std::sync::atomic::Ordering::Relaxed),
            self.cache_misses.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The principal of a key verified before, when the presented secret's
    /// digest matches the cached one (compared in constant time).
    fn cached(&self, key_id: &str, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        let c = self.cache.get(key_id)?;
        if !bool::from(c.secret_sha256.ct_eq(digest)) {
            return None;
        }
        self.cache_hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(c.principal.clone())
    }

    /// Authenticates a presented key string.
    pub async fn authenticate(&self, presented: &str) -> Result<Arc<Principal>, AuthError> {
        self.authenticate_with(presented, || Some(())).await.0
    }

    /// Authenticates a presented key string, asking `enter` for a guard
    /// (a slot of the caller's address) only when there is work to do: a
    /// cache hit, a malformed key or a key another request has just verified
    /// asks nothing. `None` refuses with `TooManyInFlight` before the
    /// database read and argon2. The guard comes back with the outcome, so the
    /// caller holds it until a failure is charged.
    pub async fn authenticate_with<G>(
        &self,
        presented: &str,
        enter: impl FnOnce() -> Option<G>,
    ) -> (Result<Arc<Principal>, AuthError>, Option<G>) {
        let mut guard = None;
        let r = self
            .authenticate_inner(presented, || {
                guard = enter();
                guard.is_some()
            })
            .await;
        (r, guard)
    }

    async fn authenticate_inner(
        &self,
        presented: &str,
        enter: impl FnOnce() -> bool,
    ) -> Result<Arc<Principal>, AuthError> {
        let Some(k) = parse_presented(presented) else {
            return Err(AuthError::Malformed);
        };
        let digest: [u8; 32] = Sha256::digest(k.secret.as_bytes()).into();
        if let Some(p) = self.cached(k.key_id, &digest) {
            return Ok(p);
        }
        let shard = k
            .key_id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % self.flights.len();
        let _flight = self.flights[shard].lock().await;
        // Someone may have verified this key while we waited.
        if let Some(p) = self.cached(k.key_id, &digest) {
            return Ok(p);
        }
        if !enter() {
            return Err(AuthError::TooManyInFlight);
        }
        self.cache_misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Read before the row: a revocation committed after this point bumps it.
        let epoch = self.forgets.load(SeqCst);
        let row = self
            .store
            .get_key(k.key_id)
            .await
            .map_err(AuthError::Unavailable)?;
        let (hash, live) = match &row {
            Some(r) => (r.secret_hash.clone(), r.revoked_at_ms.is_none()),
            None => (self.dummy_hash.clone(), false),
        };
        let secret = k.secret.to_owned();
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ok = self
            .hashers
            .run(move || {
                Argon2::default()
                    .verify_password(secret.as_bytes(), hash.as_str())
                    .is_ok()
            })
            .await
            .ok_or(AuthError::Busy)?;
        match row {
            Some(r) if ok && live => {
                let scopes = Scopes::parse(r.scopes.split(' ')).unwrap_or_default();
                let principal = Arc::new(Principal {
                    tenant: r.tenant,
                    key_id: r.key_id.clone(),
                    scopes,
                });
                self.cache.insert(
                    r.key_id.clone(),
                    Arc::new(CachedKey {
                        secret_sha256: digest,
                        principal: principal.clone(),
                    }),
                );
                // A revocation may have landed while argon2 ran on the row we
                // read before it: its `forget` either saw our entry (and
                // dropped it) or bumped the epoch before we look here. Either
                // way the revoked key does not stay cached; re-read the row to
                // answer this request.
                if self.forgets.load(SeqCst) != epoch {
                    self.cache.remove(&r.key_id);
                    let still_live = self
                        .store
                        .get_key(&r.key_id)
                        .await
                        .map_err(AuthError::Unavailable)?
                        .is_some_and(|row| row.revoked_at_ms.is_none());
                    if !still_live {
                        return Err(AuthError::Invalid);
                    }
                }
                Ok(principal)
            }
            _ => Err(AuthError::Invalid),
        }
    }

    /// How many argon2 verifications this instance has started.
    pub fn verifications(&self) -> u64 {
        self.verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every cached key (the change feed may have missed revocations),
    /// and makes sure no verification in flight puts one back.
    pub fn forget_all(&self) {
        self.forgets.fetch_add(1, SeqCst);
        self.cache.clear();
    }

    /// Drops a key from the cache (after revocation), and makes sure a
    /// verification in flight does not put it back.
    pub fn forget(&self, key_id: &str) {
        self.forgets.fetch_add(1, SeqCst);
        self.cache.remove(key_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hide_their_secret() {
        let k = generate_key("acme", Scopes::ISSUE, None, "cli", 0).unwrap();
        let p = parse_presented(&k.key).unwrap();
        assert_eq!(p.key_id, k.row.key_id);
        assert!(!k.row.secret_hash.contains(p.secret));
        assert!(k.row.secret_hash.starts_with("$argon2id$"));
        assert!(!format!("{k:?} {p:?}").contains(p.secret));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "tkb_",
            "Bearer tkb_x",
            "tkb_abcdefghijklmnop_zz",
            &format!("tkb_ABCDEFGHIJKLMNOP_{}", "a".repeat(64)),
            &format!("tkx_abcdefghijklmnop_{}", "a".repeat(64)),
            &format!("tkb_abcdefghijklmnop-{}", "a".repeat(64)),
            // Right length in bytes, a two-byte character across the split.
            &format!("tkb_abcdefghijklmno\u{e9}{}", "a".repeat(64)),
        ] {
            assert!(parse_presented(bad).is_none(), "{bad:?}");
        }
    }

    /// A verification that read the key's row before a revocation and
    /// finished after it must not put the revoked key (back) into the cache.
    #[tokio::test]
    async fn a_verification_in_flight_cannot_cache_a_key_revoked_meanwhile() {
        use crate::admin::{self, Actor};
        let (store, _dir) = crate::store::temp_store().await;
        admin::create_tenant(&store, "acme", &Actor::Cli, 1)
            .await
            .unwrap();
        let key = admin::create_key(&store, "acme", Scopes::ISSUE, None, &Actor::Cli, 1, None)
            .await
            .unwrap();
        let auth = Arc::new(Authenticator::new(store.clone(), 16, 1));

        // Hold the only argon2 thread so the verification waits after its row read.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        auth.hashers
            .tx
            .try_send(Box::new(move || {
                let _ = gate.recv();
            }))
            .unwrap();
        let in_flight = tokio::spawn({
            let (auth, key) = (auth.clone(), key.key.clone());
            async move { auth.authenticate(&key).await }
        });
        while auth.verifications() == 0 {
            tokio::task::yield_now().await;
        }
        // The row is read as live; now the key is revoked and forgotten.
        admin::revoke_key(&store, &key.row.key_id, None, &Actor::Cli, 2)
            .await
            .unwrap();
        auth.forget(&key.row.key_id);
        release.send(()).unwrap();

        let r = in_flight.await.unwrap();
        assert!(matches!(r, Err(AuthError::Invalid)), "{r:?}");
        let again = auth.authenticate(&key.key).await;
        assert!(matches!(again, Err(AuthError::Invalid)), "{again:?}");
    }
}
