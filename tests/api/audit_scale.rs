//! Issue 13, point 1: several broker instances on one database issue for the
//! same tenant at full load without refusing each other (no `audit_unavailable`
//! from a raced chain head), and the tenant's history stays one chain: every
//! token that was returned has its row, and verify passes end to end.
//!
//! Played by the tenant's own apps hammering both instances at once; the
//! attacker here is the load itself (the old compare-and-set writers failed
//! whole batches with 503 when the other instance moved the head first).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use token_broker::audit::{Actor, AuditRow, Kind, Outcome};
use token_broker::cli_audit::verify_tenant;
use token_broker::store::HeadCache;

use crate::helpers::*;

const CLIENTS: usize = 8;
const REQUESTS: usize = 150;

/// Issues `REQUESTS` tokens through `app`, returning every (status, token_id).
async fn load(app: &TestApp, key: String, client: usize) -> Vec<(u16, Option<String>, Value)> {
    let mut out = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let sid = session_for(API_KEY, (client * REQUESTS + i) as u32 % 64 + 1);
        let (s, v) = app
            .issue(
                &key,
                &json!({"session_id": sid, "user": user(&format!("u{client}-{i}"))}),
            )
            .await;
        let tid = v["token_id"].as_str().map(str::to_owned);
        out.push((s, tid, if s == 201 { Value::Null } else { v }));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_issue_for_one_tenant_without_refusing_each_other() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let second = app.spawn_second().await;
    let (a, b) = (std::sync::Arc::new(app), std::sync::Arc::new(second));

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // Half the clients on each instance, all at once.
        let target = if c % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move { load(&target, key, c).await }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let bad: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s != 201)
        .map(|(s, _, v)| (*s, v.clone()))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, first: {:?}",
        bad.len(),
        results.len(),
        bad.first()
    );
    // Neither writer ever failed a batch.
    for app in [&a, &b] {
        let h = &app.app_state.audit.health;
        assert_eq!(
            h.failed_batches.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    // Every returned token has its row: one chain, no fork, no gap.
    let issued: HashSet<String> = results.into_iter().filter_map(|(_, t, _)| t).collect();
    assert_eq!(issued.len(), CLIENTS * REQUESTS);
    let mut recorded = HashSet::new();
    a.store
        .scan_audit("acme", 0, |r| {
            if let Some(t) = r.token_id {
                recorded.insert(t);
            }
            true
        })
        .await
        .unwrap();
    let missing: Vec<_> = issued.difference(&recorded).collect();
    assert!(missing.is_empty(), "tokens without a row: {missing:?}");

    let v = verify_tenant(&a.store, "acme", None).await.unwrap();
    assert!(v.ok, "{v:?}");
    // The tenant's rows before the load (tenant, policy, key) plus one per token.
    assert!(v.rows >= (CLIENTS * REQUESTS) as u64, "{v:?}");
    let head = a.store.audit_head("acme").await.unwrap().unwrap();
    assert_eq!(head.seq as u64, v.rows, "the head is the chain's last row");
}

/// Seals counted by `counting_seal` (only the test below uses it).
static SEALS: AtomicUsize = AtomicUsize::new(0);

fn counting_seal(row: &mut AuditRow, seq: i64, hash: &str) -> (i64, String) {
    SEALS.fetch_add(1, Ordering::Relaxed);
    token_broker::audit::chain::seal(row, seq, hash)
}

/// Seals that `f` makes.
async fn seals(f: impl std::future::Future<Output = ()>) -> usize {
    let before = SEALS.load(Ordering::Relaxed);
    f.await;
    SEALS.load(Ordering::Relaxed) - before
}

/// Two writers taking turns on one tenant, as two instances on one database
/// do: once a writer has found the head moved, it locks the head before
/// sealing, so each of its rows (late ones included) is sealed once instead
/// of twice; when it finds the head where it left it, it goes back to the
/// one-statement compare-and-set. The chain stays whole throughout.
#[tokio::test]
async fn a_contended_writer_locks_the_head_first_and_seals_each_row_once() {
    let app = spawn_app().await;
    app.acme().await;
    let store = &app.store;
    let row = |at_ms| {
        AuditRow::new(
            "acme",
            Kind::TokenIssued,
            Outcome::Issued,
            Actor::ApiKey,
            at_ms,
        )
    };
    let base = store.audit_head("acme").await.unwrap().unwrap().seq;
    let mut a = HeadCache::default();
    store
        .append_once(&mut [row(1)], &mut a, counting_seal)
        .await
        .unwrap();
    let mut b = a.clone();
    assert!(!a.is_contended("acme"));
    store
        .append_once(&mut [row(2), row(3)], &mut b, counting_seal)
        .await
        .unwrap();
    // a finds the head moved: its rows are sealed after its cache, then again
    // after the head it found.
    let n = seals(async {
        let mut rows = [row(4), row(5)];
        store
            .append_once(&mut rows, &mut a, counting_seal)
            .await
            .unwrap();
        assert_eq!(rows.each_ref().map(|r| r.seq - base), [4, 5]);
    })
    .await;
    assert_eq!(n, 4);
    assert!(a.is_contended("acme"));
    store
        .append_once(&mut [row(6)], &mut b, counting_seal)
        .await
        .unwrap();
    // Contended: locked first, so each row, the late one too, is sealed once.
    let n = seals(async {
        let mut rows = [row(7), row(8)];
        let mut late = |_: &[String]| vec![row(9)];
        let mut joined = Vec::new();
        store
            .append_joining(
                &mut rows,
                &mut a,
                counting_seal,
                Some(&mut late),
                &mut joined,
            )
            .await
            .unwrap();
        assert_eq!(rows.each_ref().map(|r| r.seq - base), [7, 8]);
        assert_eq!(rows[0].prev_hash, b.get("acme").unwrap().1);
        assert_eq!(joined[0].seq - base, 9);
    })
    .await;
    assert_eq!(n, 3);
    assert!(a.is_contended("acme"), "b had moved the head again");
    // Nobody moved it since: one seal, and the lock that found the head in
    // place ends the contended mode.
    let n = seals(async {
        store
            .append_once(&mut [row(10)], &mut a, counting_seal)
            .await
            .unwrap();
    })
    .await;
    assert_eq!(n, 1);
    assert!(!a.is_contended("acme"));
    store
        .append_once(&mut [row(11)], &mut a, counting_seal)
        .await
        .unwrap();
    let head = store.audit_head("acme").await.unwrap().unwrap();
    assert_eq!(
        (head.seq - base, &head.hash),
        (11, &a.get("acme").unwrap().1)
    );
    let v = verify_tenant(store, "acme", None).await.unwrap();
    assert!(v.ok && v.rows == head.seq as u64, "{v:?}");
}

/// Every batch size, rows of several tenants interleaved, late rows joining:
/// each batch commits whole (on PostgreSQL as one statement over arrays, on
/// SQLite in statements of a few sizes), every tenant's head is its last
/// row, and each chain verifies.
#[tokio::test]
async fn batches_of_every_size_and_several_tenants_commit_whole() {
    let app = spawn_app().await;
    let store = &app.store;
    let tenants = ["t-one", "t-two", "t-three"];
    let mut heads = HeadCache::default();
    let mut at = 1_764_000_000_000;
    let mut row = |tenant: &str| {
        at += 1;
        let mut r = AuditRow::new(
            tenant,
            Kind::TokenIssued,
            Outcome::Refused,
            Actor::ApiKey,
            at,
        );
        r.user_id = Some(format!("u{at}"));
        r.detail = (at % 3 == 0).then(|| "{\"note\":\"é ✓\"}".to_owned());
        r
    };
    let mut written = std::collections::HashMap::<&str, i64>::new();
    for n in 1..=70usize {
        let mut rows: Vec<AuditRow> = (0..n).map(|i| row(tenants[(i * 7 + n) % 3])).collect();
        let late_rows: Vec<AuditRow> = (0..n % 4).map(|_| row(&rows[0].tenant.clone())).collect();
        let mut late = Some(late_rows);
        let mut hand = |_: &[String]| late.take().unwrap_or_default();
        let mut joined = Vec::new();
        store
            .append_joining(
                &mut rows,
                &mut heads,
                token_broker::audit::chain::seal,
                Some(&mut hand),
                &mut joined,
            )
            .await
            .unwrap();
        for r in rows.iter().chain(&joined) {
            *written
                .entry(tenants.iter().find(|t| **t == r.tenant).unwrap())
                .or_default() += 1;
        }
    }
    for t in tenants {
        let head = store.audit_head(t).await.unwrap().unwrap();
        assert_eq!(head.seq, written[t], "{t}");
        assert_eq!(Some(&(head.seq, head.hash.clone())), heads.get(t));
        let v = verify_tenant(store, t, None).await.unwrap();
        assert!(v.ok && v.rows == head.seq as u64, "{t}: {v:?}");
    }
    // A writer that never wrote (an instance just started) continues each
    // chain after its head.
    let mut fresh = HeadCache::default();
    let mut rows = vec![row("t-one"), row("t-two")];
    store
        .append_once(&mut rows, &mut fresh, token_broker::audit::chain::seal)
        .await
        .unwrap();
    assert_eq!(rows[1].seq, written["t-two"] + 1);
    assert!(verify_tenant(store, "t-two", None).await.unwrap().ok);
}
