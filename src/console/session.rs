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
/// At most this many live sessions; the oldest are dropped beyond it.
const MAX_SESSIONS: usize = 10_000;

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

static SESSIONS: LazyLock<Mutex<HashMap<String, Session>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn table() -> std::sync::MutexGuard<'static, HashMap<String, Session>> {
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
    let mut t = table();
    if t.len() >= MAX_SESSIONS {
        t.retain(|_, s| s.alive(now_ms));
        while t.len() >= MAX_SESSIONS {
            let oldest = t
                .iter()
                .min_by_key(|(_, s)| s.last_seen_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => t.remove(&k),
                None => break,
            };
        }
    }
    t.insert(id.clone(), s);
    Ok(id)
}

/// The live session `id` names at `now_ms` (touched), or None (and a dead
/// one is removed).
pub fn lookup(id: &str, now_ms: i64) -> Option<Session> {
    let mut t = table();
    match t.get_mut(id) {
        Some(s) if s.alive(now_ms) => {
            s.last_seen_ms = now_ms;
            Some(s.clone())
        }
        Some(_) => {
            t.remove(id);
            None
        }
        None => None,
    }
}

pub fn remove(id: &str) {
    table().remove(id);
}

/// Ends every session of a key (it was revoked).
pub fn remove_key(key_id: &str) {
    table().retain(|_, s| s.key_id != key_id);
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

    #[test]
    fn csrf_comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "x"));
    }
}
