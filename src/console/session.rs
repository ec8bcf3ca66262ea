//! Console sessions: server-side, keyed by a random id held in an HttpOnly
//! cookie. Expiry decisions take `now` so they are tested without waiting.
//!
//! The table lives in this process (a broker restart signs everyone out; a
//! second broker behind the same load balancer does not know the session).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::auth::{Principal, Required, Scopes, scope};

/// A session ends this long after sign-in, whatever happens.
pub const ABSOLUTE_TTL_MS: i64 = 8 * 3600 * 1000;
/// ... or after this long without a request.
pub const IDLE_TTL_MS: i64 = 30 * 60 * 1000;
/// At most this many live sessions in the process. When it is reached, the
/// tenant that holds the most sessions loses its least recently used one, so
/// one tenant's sign-ins cannot sign out another tenant's users.
const MAX_SESSIONS: usize = 10_000;
/// At most this many live sessions per API key; a key's next sign-in ends
/// that key's least recently used session.
const MAX_SESSIONS_PER_KEY: usize = 32;

pub const COOKIE: &str = "tb_console";
/// The pre-session cookie that carries the sign-in form's CSRF token.
pub const PRE_COOKIE: &str = "tb_console_pre";

#[derive(Debug, Clone)]
pub struct Session {
    pub tenant: String,
    pub key_id: String,
    pub scopes: Scopes,
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
}

impl Session {
    pub fn new(p: &Principal, now_ms: i64) -> Result<Session, NoRandomness> {
        Ok(Session {
            tenant: p.tenant.clone(),
            key_id: p.key_id.clone(),
            scopes: p.scopes,
            csrf: random_token()?,
            created_ms: now_ms,
            last_seen_ms: now_ms,
        })
    }

    /// Whether the session is still alive at `now_ms`.
    pub fn alive(&self, now_ms: i64) -> bool {
        now_ms < self.created_ms.saturating_add(ABSOLUTE_TTL_MS)
            && now_ms < self.last_seen_ms.saturating_add(IDLE_TTL_MS)
    }

    pub fn is_admin(&self) -> bool {
        scope::Admin::allows(self.scopes)
    }

    pub fn can_audit(&self) -> bool {
        scope::Audit::allows(self.scopes)
    }
}

/// The session table, with its eviction rules, apart from the process-wide
/// instance (`SESSIONS`) so that its limits can be tested on a small one.
///
/// Eviction never crosses tenants unfairly: past `per_key` sessions a key
/// loses its own least recently used one, and at `total` the least recently
/// used session of the tenant holding the most sessions goes (the newcomer's
/// tenant counted with its new session, so on a tie the newcomer's tenant
/// pays). A tenant that floods sign-ins therefore only evicts its own
/// sessions, or those of a tenant holding even more than it does.
#[derive(Debug)]
pub struct Table {
    sessions: HashMap<String, Session>,
    total: usize,
    per_key: usize,
}

impl Table {
    /// An empty table of at most `total` sessions, `per_key` for each key
    /// (both at least 1).
    pub fn new(total: usize, per_key: usize) -> Table {
        Table {
            sessions: HashMap::new(),
            total: total.max(1),
            per_key: per_key.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The id of the least recently used session among those `pick` selects.
    fn least_recent(&self, pick: impl Fn(&Session) -> bool) -> Option<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| pick(s))
            .min_by_key(|(_, s)| (s.last_seen_ms, s.created_ms))
            .map(|(id, _)| id.clone())
    }

    /// Stores `s` under `id`, first making room by the rules above.
    pub fn insert(&mut self, id: String, s: Session, now_ms: i64) {
        // The key's own sessions first: dead ones, then its least recently used.
        let of_key = |t: &Table| t.sessions.values().filter(|x| x.key_id == s.key_id).count();
        if of_key(self) >= self.per_key {
            self.sessions
                .retain(|_, x| x.key_id != s.key_id || x.alive(now_ms));
            while of_key(self) >= self.per_key {
                match self.least_recent(|x| x.key_id == s.key_id) {
                    Some(old) => self.sessions.remove(&old),
                    None => break,
                };
            }
        }
        if self.sessions.len() >= self.total {
            self.sessions.retain(|_, x| x.alive(now_ms));
            while self.sessions.len() >= self.total {
                let Some(tenant) = self.largest_tenant(&s.tenant) else {
                    break;
                };
                match self.least_recent(|x| x.tenant == tenant) {
                    Some(old) => self.sessions.remove(&old),
                    None => break,
                };
            }
        }
        self.sessions.insert(id, s);
    }

    /// The tenant holding the most sessions, counting `newcomer`'s with the
    /// session about to be added (so a tie goes against the newcomer).
    fn largest_tenant(&self, newcomer: &str) -> Option<String> {
        let mut held: HashMap<&str, usize> = HashMap::new();
        for x in self.sessions.values() {
            *held.entry(x.tenant.as_str()).or_default() += 1;
        }
        if let Some(n) = held.get_mut(newcomer) {
            *n += 1;
        }
        held.into_iter()
            .max_by_key(|(t, n)| (*n, *t == newcomer, std::cmp::Reverse(*t)))
            .map(|(t, _)| t.to_owned())
    }

    /// The live session `id` names at `now_ms` (touched), or None (and a dead
    /// one is removed).
    pub fn lookup(&mut self, id: &str, now_ms: i64) -> Option<Session> {
        match self.sessions.get_mut(id) {
            Some(s) if s.alive(now_ms) => {
                s.last_seen_ms = now_ms;
                Some(s.clone())
            }
            Some(_) => {
                self.sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&mut self, id: &str) {
        self.sessions.remove(id);
    }

    /// Ends every session of a key.
    pub fn remove_key(&mut self, key_id: &str) {
        self.sessions.retain(|_, s| s.key_id != key_id);
    }
}

static SESSIONS: LazyLock<Mutex<Table>> =
    LazyLock::new(|| Mutex::new(Table::new(MAX_SESSIONS, MAX_SESSIONS_PER_KEY)));

fn table() -> std::sync::MutexGuard<'static, Table> {
    SESSIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The operating system has no randomness to give: no session can be made
/// safely (an all-zero id must never be issued), so the request fails.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed")]
pub struct NoRandomness;

/// 256 random bits, hex.
pub fn random_token() -> Result<String, NoRandomness> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| NoRandomness)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Stores a new session and returns its id.
pub fn insert(s: Session, now_ms: i64) -> Result<String, NoRandomness> {
    let id = random_token()?;
    table().insert(id.clone(), s, now_ms);
    Ok(id)
}

/// The live session `id` names at `now_ms` (touched), or None (and a dead
/// one is removed).
pub fn lookup(id: &str, now_ms: i64) -> Option<Session> {
    table().lookup(id, now_ms)
}

pub fn remove(id: &str) {
    table().remove(id);
}

/// Ends every session of a key (it was revoked).
pub fn remove_key(key_id: &str) {
    table().remove_key(key_id);
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict, scoped to
/// `/console`, Secure over https; `max_age` None clears it.
pub fn set_cookie(name: &str, value: &str, max_age_s: Option<i64>, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    match max_age_s {
        Some(s) => c.push_str(&format!("; Max-Age={s}")),
        None => c.push_str("; Max-Age=0"),
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// Constant-time string equality (CSRF tokens).
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(now: i64) -> Session {
        Session::new(
            &Principal {
                tenant: "acme".into(),
                key_id: "k1".into(),
                scopes: Scopes::AUDIT,
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn sessions_die_when_idle_and_at_the_absolute_limit() {
        let t0 = 1_000_000;
        let id = insert(s(t0), t0).unwrap();
        // Idle just under the limit: alive, and the touch extends it.
        assert!(lookup(&id, t0 + IDLE_TTL_MS - 1).is_some());
        assert!(lookup(&id, t0 + 2 * IDLE_TTL_MS - 2).is_some());
        // Idle past it: gone, and stays gone.
        assert!(lookup(&id, t0 + 3 * IDLE_TTL_MS).is_none());
        assert!(lookup(&id, t0 + 2 * IDLE_TTL_MS - 1).is_none());

        // Kept busy, it still ends at the absolute limit.
        let id = insert(s(t0), t0).unwrap();
        let mut now = t0;
        while now + IDLE_TTL_MS / 2 < t0 + ABSOLUTE_TTL_MS {
            now += IDLE_TTL_MS / 2;
            assert!(lookup(&id, now).is_some(), "alive at {now}");
        }
        assert!(lookup(&id, t0 + ABSOLUTE_TTL_MS).is_none());
    }

    #[test]
    fn unknown_ids_and_revoked_keys_find_nothing() {
        assert!(lookup("", 1).is_none());
        assert!(lookup(&random_token().unwrap(), 1).is_none());
        let mut x = s(5);
        x.key_id = "revoked-key-unit".into();
        let id = insert(x, 5).unwrap();
        remove_key("revoked-key-unit");
        assert!(lookup(&id, 6).is_none());
    }

    fn of(tenant: &str, key_id: &str, now: i64) -> Session {
        Session {
            tenant: tenant.into(),
            key_id: key_id.into(),
            scopes: Scopes::AUDIT,
            csrf: String::new(),
            created_ms: now,
            last_seen_ms: now,
        }
    }

    /// The review's attack (D2): an auditor of acme signs in over and over
    /// with one key while a globex user is idle. Against the process's own
    /// limits, globex's session survives it.
    #[test]
    fn a_flood_of_one_tenants_sign_ins_never_evicts_another_tenants_session() {
        let t0 = 1_000_000;
        let mut t = Table::new(MAX_SESSIONS, MAX_SESSIONS_PER_KEY);
        t.insert("victim".into(), of("globex", "kg", t0), t0);
        let flood = MAX_SESSIONS as i64 + 10;
        for i in 1..=flood {
            t.insert(format!("a{i}"), of("acme", "ka", t0 + i), t0 + i);
        }
        assert!(t.lookup("victim", t0 + flood + 1).is_some());
        assert_eq!(
            t.len(),
            MAX_SESSIONS_PER_KEY + 1,
            "acme's key kept its newest"
        );

        // With many keys acme fills the whole table; then it evicts its own.
        let mut t = Table::new(50, 4);
        t.insert("g1".into(), of("globex", "kg", t0), t0);
        t.insert("g2".into(), of("globex", "kg2", t0), t0);
        t.insert("i1".into(), of("initech", "ki", t0), t0);
        for i in 1..=500 {
            let key = format!("ka{}", i % 40);
            t.insert(format!("a{i}"), of("acme", &key, t0 + i), t0 + i);
        }
        assert_eq!(t.len(), 50);
        for victim in ["g1", "g2", "i1"] {
            assert!(t.lookup(victim, t0 + 501).is_some(), "{victim} was evicted");
        }
    }

    #[test]
    fn a_keys_own_least_recently_used_session_goes_first() {
        let mut t = Table::new(100, 3);
        t.insert("k1-a".into(), of("acme", "k1", 10), 10);
        t.insert("k2".into(), of("acme", "k2", 11), 11);
        t.insert("k1-b".into(), of("acme", "k1", 12), 12);
        t.insert("k1-c".into(), of("acme", "k1", 13), 13);
        // k1-a is used again, so k1-b is now k1's least recently used.
        assert!(t.lookup("k1-a", 14).is_some());
        t.insert("k1-d".into(), of("acme", "k1", 15), 15);
        assert!(t.lookup("k1-b", 16).is_none(), "k1's LRU session ended");
        for alive in ["k1-a", "k1-c", "k1-d", "k2"] {
            assert!(t.lookup(alive, 16).is_some(), "{alive}");
        }
    }

    #[test]
    fn at_the_global_cap_the_tenant_holding_the_most_sessions_gives_one_up() {
        let mut t = Table::new(4, 10);
        t.insert("a1".into(), of("acme", "ka1", 10), 10);
        t.insert("a2".into(), of("acme", "ka2", 11), 11);
        t.insert("a3".into(), of("acme", "ka3", 12), 12);
        t.insert("g1".into(), of("globex", "kg", 13), 13);
        // Full: globex's newcomer takes acme's least recently used (acme 3, globex 2).
        t.insert("g2".into(), of("globex", "kg", 14), 14);
        assert!(t.lookup("a1", 15).is_none());
        // A tie (2 and 2 with the newcomer): the newcomer's tenant pays.
        t.insert("g3".into(), of("globex", "kg", 16), 16);
        assert!(t.lookup("g1", 17).is_none());
        for alive in ["a2", "a3", "g2", "g3"] {
            assert!(t.lookup(alive, 17).is_some(), "{alive}");
        }
        // Dead sessions go before any live one.
        let later = 17 + IDLE_TTL_MS;
        assert!(t.lookup("a2", later - 1).is_some());
        t.insert("g4".into(), of("globex", "kg", later), later);
        assert_eq!(t.len(), 2, "the idle ones were dropped: {t:?}");
    }

    #[test]
    fn csrf_comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "x"));
    }
}
