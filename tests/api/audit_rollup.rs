//! Issue 13, point 5: summaries read per-day rollup buckets plus the rows the
//! background pass has not counted, and must answer exactly what a scan of
//! the rows answers (`audit_summary_scan`, the oracle), whatever the window,
//! whether or not the pass ran, with rows written by a lagging clock, after a
//! prune, and with two passes racing. Rows span more than a year across a
//! 4096-day bucket boundary, so every level of the rollup is used.
//!
//! The stores here are opened without a server, so no background pass runs
//! except the ones a test starts.

use serde_json::{Value, json};
use token_broker::audit::{Actor, AuditRow, Kind, Outcome};
use token_broker::store::{ROLLUP_ROUND_LOCK, Store, SummaryRow};

use crate::helpers::*;

const DAY: i64 = 86_400_000;
/// 2025-07-31 05:13 UTC; rows run for 420 days, across day 20480 (a
/// multiple of 4096: a boundary of every level).
const T0: i64 = 20_300 * DAY + 5 * 3_600_000 + 13 * 60_000;
const SPAN_DAYS: i64 = 420;
const BYS: [&str; 5] = ["role", "user", "session", "rule", "day"];
const TENANT: &str = "acme";
/// No cap on a summary's groups.
const ALL: i64 = i64::MAX;

/// A small deterministic generator (xorshift64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n as u64) as i64
    }
}

/// A token request (or now and then an admin event, which summaries skip)
/// at `at_ms`, with NULL role, user, session and rule keys among the others.
fn row(rng: &mut Rng, at_ms: i64) -> AuditRow {
    let r = rng.next();
    if r % 41 == 3 {
        return AuditRow::new(TENANT, Kind::KeyCreated, Outcome::Ok, Actor::Cli, at_ms);
    }
    let refused = r.is_multiple_of(7);
    let mut row = AuditRow::new(
        TENANT,
        if refused {
            Kind::TokenRefused
        } else {
            Kind::TokenIssued
        },
        if refused {
            Outcome::Refused
        } else {
            Outcome::Issued
        },
        Actor::ApiKey,
        at_ms,
    );
    // Each key is NULL now and then (a refused request without a role, an
    // app that names no user, ...).
    let some = |d: u64, m: u64| !(r / d).is_multiple_of(m);
    row.requested_role = some(1, 5).then(|| "publisher".to_owned());
    if !refused {
        row.granted_role =
            Some(["publisher", "subscriber", "moderator"][(r / 3 % 3) as usize].into());
        row.rule = some(11, 4).then(|| ["students", "teachers"][(r / 13 % 2) as usize].into());
    }
    row.user_id = some(17, 6).then(|| format!("app:user:u{}", r / 19 % 9));
    row.session_id = some(23, 8).then(|| format!("s{}", r / 29 % 5));
    row
}

/// `n` rows spread over `[from, from + days)`, in time order.
fn rows(rng: &mut Rng, n: i64, from: i64, days: i64) -> Vec<AuditRow> {
    let mut at: Vec<i64> = (0..n).map(|_| from + rng.below(days * DAY)).collect();
    at.sort();
    at.into_iter().map(|t| row(rng, t)).collect()
}

/// Appends `rows` through the store's own append path (sealed into the
/// chain); returns them sealed (with their `seq`).
async fn write(store: &Store, rows: Vec<AuditRow>) -> Vec<AuditRow> {
    let mut rows = rows;
    for batch in rows.chunks_mut(500) {
        token_broker::audit::append(store, batch, &mut Default::default())
            .await
            .unwrap();
    }
    rows
}

/// A store on a fresh database, with no server (so no background pass).
async fn store() -> (Store, String, TestDb) {
    let (url, db) = fresh_database().await;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, url, db)
}

/// Windows of every kind: none, one-sided, both, sub-day, day-aligned,
/// across level boundaries, before and after every row, inverted, random.
fn windows(rng: &mut Rng) -> Vec<(Option<i64>, Option<i64>)> {
    let t1 = T0 + SPAN_DAYS * DAY;
    let mid = T0 + 211 * DAY + 7_777_777;
    let mid_day = mid.div_euclid(DAY) * DAY;
    let mut w = vec![
        (None, None),
        (Some(mid), None),
        (None, Some(mid)),
        (Some(mid_day), None),
        (None, Some(mid_day)),
        (Some(T0 + 37 * DAY + 5), Some(t1 - 40 * DAY - 9)),
        (Some(mid), Some(mid + 3_600_000)),
        (Some(mid_day), Some(mid_day + DAY)),
        (Some(mid_day - DAY), Some(mid_day + DAY)),
        (Some(mid_day + 1), Some(mid_day + 2 * DAY - 1)),
        (Some(20_480 * DAY - 1), Some(20_480 * DAY + 1)),
        (Some(20_470 * DAY + 7), Some(20_500 * DAY + 9)),
        (Some(20_416 * DAY), Some(20_544 * DAY)),
        (Some(20_479 * DAY), Some(20_481 * DAY)),
        (Some(20_352 * DAY), Some(20_608 * DAY)),
        (Some(T0 - 100 * DAY), Some(T0 - 10 * DAY)),
        (None, Some(T0 - 1)),
        (None, Some(T0)),
        (Some(t1 + 10 * DAY), None),
        (Some(t1 + 1), Some(t1 + 5 * DAY)),
        (Some(T0), Some(t1 + 1)),
        (Some(mid), Some(mid - DAY)),
        (Some(mid_day + DAY), Some(mid_day)),
    ];
    for k in 0..40 {
        let a = T0 - 5 * DAY + rng.below((SPAN_DAYS + 10) * DAY);
        let len = [
            rng.below(7_200_000),
            rng.below(3 * DAY),
            rng.below(60 * DAY),
            rng.below(400 * DAY),
        ][k % 4];
        w.push(match k % 5 {
            0 => (Some(a), None),
            1 => (None, Some(a)),
            _ => (Some(a), Some(a + len)),
        });
    }
    w
}

/// Every `by` over every window: the summary equals the scan. Returns how
/// many of them had groups (so a test knows it compared something).
async fn assert_same(store: &Store, windows: &[(Option<i64>, Option<i64>)], what: &str) -> usize {
    let mut with_groups = 0;
    for by in BYS {
        for &(since, until) in windows {
            let want = store
                .audit_summary_scan(TENANT, by, since, until, ALL)
                .await
                .unwrap();
            let got = store
                .audit_summary(TENANT, by, since, until, ALL)
                .await
                .unwrap();
            assert_eq!(got, want, "{what}: by={by} since={since:?} until={until:?}");
            with_groups += usize::from(!want.is_empty());
            // Capped, both answer with the same first groups of that order.
            let top = store
                .audit_summary(TENANT, by, since, until, 2)
                .await
                .unwrap();
            assert_eq!(
                top[..],
                want[..want.len().min(2)],
                "{what}: by={by} limit=2"
            );
        }
    }
    with_groups
}

/// Issued and refused over all groups of a summary.
fn totals(groups: &[SummaryRow]) -> (i64, i64) {
    groups
        .iter()
        .fold((0, 0), |(i, r), g| (i + g.issued, r + g.refused))
}

/// Counts of token rows as kept in Rust.
fn count(rows: &[AuditRow]) -> (i64, i64) {
    rows.iter()
        .fold((0, 0), |(i, r), row| match row.outcome.as_str() {
            "issued" => (i + 1, r),
            "refused" => (i, r + 1),
            _ => (i, r),
        })
}

#[tokio::test]
async fn summaries_from_the_rollup_equal_the_scan_before_after_and_between_passes() {
    // Arrange: 1500 rows over 420 days, NULL keys among them.
    let (store, _url, _db) = store().await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let first = rows(&mut rng, 1500, T0, SPAN_DAYS);
    let mut all = first.clone();
    write(&store, first).await;
    let ws = windows(&mut rng);

    // (a) Before any pass: the rollup is empty.
    assert_eq!(store.rollup_size(TENANT).await.unwrap(), (0, 0));
    let n = assert_same(&store, &ws, "before any pass").await;
    assert!(n > ws.len() * 3, "only {n} summaries had groups");
    let whole = store
        .audit_summary(TENANT, "role", None, None, ALL)
        .await
        .unwrap();
    assert_eq!(totals(&whole), count(&all));

    // (b) After a full pass in small chunks (many chunk edges inside days).
    let counted = store.rollup_all(97).await.unwrap();
    let head = store.audit_head(TENANT).await.unwrap().unwrap().seq;
    assert_eq!(counted, head, "every row of the chain covered once");
    let (cells, through) = store.rollup_size(TENANT).await.unwrap();
    assert_eq!(through, head);
    assert!(cells > 1000, "{cells} rollup rows");
    assert_same(&store, &ws, "after a full pass").await;
    assert_eq!(
        store.rollup_all(97).await.unwrap(),
        0,
        "nothing left to count"
    );

    // (c) More rows after the pass: the tail is read raw.
    let later = rows(&mut rng, 300, T0 + 300 * DAY, 150);
    all.extend(later.clone());
    write(&store, later).await;
    assert_same(&store, &ws, "a pass, then more rows").await;

    // (d) A lagging clock: rows recorded now with times in days the pass
    // has already counted (and before all other rows).
    let lagging = rows(&mut rng, 200, T0 - 3 * DAY, SPAN_DAYS);
    all.extend(lagging.clone());
    write(&store, lagging).await;
    assert_same(&store, &ws, "rows from a lagging clock, uncounted").await;
    // A partial pass: part of the tail counted, part not.
    assert_eq!(store.rollup_pass(TENANT, 150).await.unwrap(), 150);
    assert_same(&store, &ws, "a partial pass over the tail").await;
    store.rollup_all(1000).await.unwrap();
    assert_same(&store, &ws, "rows from a lagging clock, counted").await;

    // (e) NULL keys are groups of their own, as in the scan.
    for by in ["role", "user", "session", "rule"] {
        let g = store
            .audit_summary(TENANT, by, None, None, ALL)
            .await
            .unwrap();
        assert!(g.iter().any(|g| g.key.is_none()), "by={by}: {g:?}");
    }
    let whole = store
        .audit_summary(TENANT, "day", None, None, ALL)
        .await
        .unwrap();
    assert_eq!(totals(&whole), count(&all));
}

#[tokio::test]
async fn a_prune_drops_the_rollup_and_summaries_count_only_the_retained_rows() {
    let (store, _url, _db) = store().await;
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let all = write(&store, rows(&mut rng, 1200, T0, SPAN_DAYS)).await;
    let ws = windows(&mut rng);
    store.rollup_all(500).await.unwrap();
    let before = store
        .audit_summary(TENANT, "user", None, None, ALL)
        .await
        .unwrap();
    assert_eq!(totals(&before), count(&all));

    // Prune the first half of the history.
    let cut = T0 + 200 * DAY + 12_345;
    let p = store
        .prune_audit(TENANT, cut, T0 + 500 * DAY)
        .await
        .unwrap()
        .unwrap();
    // The rollup restarts at the prune point, empty.
    assert_eq!(store.rollup_size(TENANT).await.unwrap(), (0, p.through_seq));
    let kept: Vec<AuditRow> = all
        .iter()
        .filter(|r| r.seq > p.through_seq)
        .cloned()
        .collect();
    assert!(kept.len() < all.len() && !kept.is_empty());
    let after = store
        .audit_summary(TENANT, "user", None, None, ALL)
        .await
        .unwrap();
    assert_eq!(
        totals(&after),
        count(&kept),
        "counts drop to the retained rows"
    );
    assert_same(&store, &ws, "after a prune, before the next pass").await;

    // The pass recounts only what is left (the pruned range is skipped).
    let counted = store.rollup_all(100).await.unwrap();
    let head = store.audit_head(TENANT).await.unwrap().unwrap().seq;
    assert_eq!(counted, head - p.through_seq);
    let after = store
        .audit_summary(TENANT, "rule", None, None, ALL)
        .await
        .unwrap();
    assert_eq!(totals(&after), count(&kept));
    assert_same(&store, &ws, "after a prune and a pass").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_racing_on_two_connections_count_each_row_once() {
    let (a, url, _db) = store().await;
    // A second instance: its own pools on the same database.
    let b = Store::connect(&url).await.unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0003);
    write(&a, rows(&mut rng, 1500, T0, SPAN_DAYS)).await;
    let ws = windows(&mut rng);

    let mut counted_before = 0;
    for round in 0..2 {
        // Small, different chunks, so the passes keep meeting.
        let (x, y, z) = tokio::join!(
            a.rollup_all(13),
            b.rollup_all(17),
            a.rollup_pass(TENANT, 29)
        );
        // Each pass stops at the head it saw first; finish whatever is left.
        let rest = a.rollup_all(1000).await.unwrap();
        let head = a.audit_head(TENANT).await.unwrap().unwrap().seq;
        assert_eq!(
            x.unwrap() + y.unwrap() + z.unwrap() + rest,
            head - counted_before,
            "round {round}: every row covered by exactly one pass"
        );
        counted_before = head;
        assert_eq!(a.rollup_size(TENANT).await.unwrap().1, head);
        assert_same(&b, &ws, &format!("round {round}: after racing passes")).await;
        // More rows for the next round, some in days already counted.
        write(&a, rows(&mut rng, 300, T0 - DAY, SPAN_DAYS + 30)).await;
    }
    b.close().await;
}

/// Another instance's rollup round: a transaction on a connection of its own
/// that tries to take the round's lock; true when it got it.
async fn other_round(url: &str) -> (sqlx::Transaction<'static, sqlx::Postgres>, bool) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut round = pool.begin().await.unwrap();
    let got = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(ROLLUP_ROUND_LOCK)
        .fetch_one(&mut *round)
        .await
        .unwrap();
    (round, got)
}

/// Two instances on one PostgreSQL: while one runs a rollup round (it holds
/// `ROLLUP_ROUND_LOCK` for the round), another's round is skipped instead of
/// reading the same chunks again only to lose each of them; a round that ends
/// lets go of the lock, and the next round counts everything. (SQLite has one
/// instance per file: its rounds always run.)
#[tokio::test]
async fn an_instance_skips_the_rollup_round_that_another_instance_is_running() {
    let (store, url, _db) = store().await;
    let mut rng = Rng(0x5eed_1234_abcd_0005);
    write(&store, rows(&mut rng, 300, T0, 40)).await;
    let head = store.audit_head(TENANT).await.unwrap().unwrap().seq;
    let pg = url.starts_with("postgres");
    if pg {
        // The other instance's round, holding the lock.
        let (round, held) = other_round(&url).await;
        assert!(held);
        assert_eq!(store.rollup_all(1000).await.unwrap(), 0, "skipped");
        assert_eq!(store.rollup_size(TENANT).await.unwrap().1, 0);
        round.rollback().await.unwrap();
    }
    assert_eq!(store.rollup_all(1000).await.unwrap(), head);
    assert_eq!(store.rollup_size(TENANT).await.unwrap().1, head);
    if pg {
        // The round that ran released the lock (it is not left on a pooled
        // connection): another instance takes it.
        let (_round, free) = other_round(&url).await;
        assert!(free, "the lock outlived the round");
    }
}

/// A chunk whose rows have many distinct keys would make one long write
/// transaction (each row adds to 7 levels of each dimension); the pass cuts
/// it shorter, and still counts every row exactly once.
#[tokio::test]
async fn a_chunk_of_many_distinct_keys_is_cut_short_and_counted_once() {
    let (store, _url, _db) = store().await;
    let mut rng = Rng(0x5eed_1234_abcd_0005);
    // Enough for more than one transaction's worth (PostgreSQL allows more).
    let n = match store.dialect() {
        token_broker::store::Dialect::Sqlite => 2_500,
        token_broker::store::Dialect::Postgres => 12_000,
    };
    let mut many = rows(&mut rng, n, T0, SPAN_DAYS);
    for (i, r) in many.iter_mut().enumerate() {
        r.user_id = Some(format!("app:user:distinct-{i}"));
        r.session_id = Some(format!("distinct-session-{i}"));
    }
    write(&store, many).await;
    let head = store.audit_head(TENANT).await.unwrap().unwrap().seq;
    let first = store.rollup_pass(TENANT, 20_000).await.unwrap();
    assert!(
        first > 0 && first < head,
        "one step of {head} rows was cut short: {first}"
    );
    assert_eq!(first + store.rollup_all(20_000).await.unwrap(), head);
    let ws = windows(&mut rng);
    assert_same(&store, &ws, "after passes cut short").await;
}

/// Summaries are counts, not proofs: a database administrator who edits the
/// rollup changes what a summary says (which shows summaries do read it),
/// and `audit verify`, which reads only the chain, still passes.
#[tokio::test]
async fn an_edited_rollup_row_changes_summaries_and_never_verify() {
    let (store, url, _db) = store().await;
    let mut rng = Rng(0x5eed_1234_abcd_0004);
    write(&store, rows(&mut rng, 400, T0, SPAN_DAYS)).await;
    store.rollup_all(1000).await.unwrap();
    let before = store
        .audit_summary(TENANT, "user", None, None, ALL)
        .await
        .unwrap();
    assert_eq!(
        before,
        store
            .audit_summary_scan(TENANT, "user", None, None, ALL)
            .await
            .unwrap()
    );

    raw(
        &url,
        "UPDATE audit_rollup SET issued = issued + 1000 \
         WHERE dim = 'user' AND key = 'app:user:u3' AND level = 6 AND bucket = 5",
    )
    .await;
    let after = store
        .audit_summary(TENANT, "user", None, None, ALL)
        .await
        .unwrap();
    let u3 = |g: &[SummaryRow]| {
        g.iter()
            .find(|g| g.key.as_deref() == Some("app:user:u3"))
            .map(|g| g.issued)
    };
    assert_eq!(u3(&after), u3(&before).map(|n| n + 1000));
    // The scan and verify read rows only.
    assert_eq!(
        before,
        store
            .audit_summary_scan(TENANT, "user", None, None, ALL)
            .await
            .unwrap()
    );
    let v = token_broker::cli_audit::verify_tenant(&store, TENANT, None)
        .await
        .unwrap();
    assert!(v.ok, "{v:?}");
}

/// Raw SQL on the test database, as its administrator.
async fn raw(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

#[tokio::test]
async fn the_summary_route_answers_from_the_rollup_as_from_the_rows() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let sid = session_for(API_KEY, 3);
    for i in 0..6 {
        let (s, _) = app
            .issue(
                &key,
                &json!({"session_id": sid, "user": user(&format!("u{}", i % 3))}),
            )
            .await;
        assert_eq!(s, 201);
    }
    app.store.rollup_all(1000).await.unwrap();
    let (s, _) = app
        .issue(&key, &json!({"session_id": sid, "user": user("late")}))
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .issue(
            &key,
            &json!({"session_id": sid, "user": {"id": "troll", "groups": ["banned"]}}),
        )
        .await;
    assert_eq!(s, 403);
    for by in BYS {
        let v: Value = app
            .get(&format!("/v1/audit/summary?by={by}"), &key)
            .await
            .json()
            .await
            .unwrap();
        let want = app
            .store
            .audit_summary_scan(TENANT, by, None, None, ALL)
            .await
            .unwrap();
        assert_eq!(v["groups"], serde_json::to_value(&want).unwrap(), "by={by}");
    }
    let (_, through) = app.store.rollup_size(TENANT).await.unwrap();
    assert!(through > 0, "the route read a rollup that had counted rows");
}
