//! Signed checkpoints and Merkle proofs (issue 13, points 2 and 3): an
//! attacker with write access to the database (edits, deletions, insertions,
//! reordering, truncation, a rewrite with every hash recomputed, an erased
//! tenant, a prune the history did not record) is caught by `audit verify`
//! against checkpoints signed with a key outside the database; inclusion and
//! consistency proofs round-trip and forged or foreign ones are rejected;
//! checkpoints and proofs are confined to the tenant's own audit keys.

use serde_json::{Value, json};
use token_broker::audit::AuditRow;
use token_broker::audit::chain;
use token_broker::audit::checkpoint::{SigningKey, VerifierKey, verify_proof};
use token_broker::cli_audit::{prune_tenant, verify_signed, verify_tenant};

use crate::helpers::*;

struct Signed {
    app: TestApp,
    key: VerifierKey,
    dir: tempfile::TempDir,
    acme: String,
}

/// A broker with a checkpoint key and file; the periodic writer is slowed
/// down so the test decides when checkpoints are taken (GET /v1/audit/checkpoint).
async fn signed_app() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("checkpoint.key");
    let key = SigningKey::generate(&key_path, "test-broker")
        .unwrap()
        .verifier();
    let file = dir.path().join("checkpoints.log");
    let app = spawn_app_with(move |s| {
        s.checkpoint_key_file = Some(key_path);
        s.checkpoint_file = Some(file);
        s.checkpoint_interval = std::time::Duration::from_secs(3600);
        s.checkpoint_every_rows = u64::MAX;
    })
    .await;
    let acme = app.acme().await;
    Signed {
        app,
        key,
        dir,
        acme,
    }
}

async fn issue_n(app: &TestApp, key: &str, n: u32) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        let (s, v) = app
            .issue(
                key,
                &json!({"session_id": session_for(API_KEY, i), "user": user(&format!("u{i}"))}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        out.push(v);
    }
    out
}

async fn checkpoint(app: &TestApp, key: &str) -> String {
    let r = app.get("/v1/audit/checkpoint", key).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

impl Signed {
    /// A signed checkpoint of acme's history now, and the checkpoint file.
    async fn take(&self) -> String {
        checkpoint(&self.app, &self.acme).await;
        std::fs::read_to_string(self.dir.path().join("checkpoints.log")).unwrap()
    }

    /// `audit verify --checkpoints FILE --public-key KEY` for acme: the fault's problem.
    async fn verify(&self, notes: &str) -> Option<(&'static str, String)> {
        let r = verify_signed(&self.app.store, Some("acme"), notes, &self.key)
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "acme is verified even when it has no rows left");
        r[0].fault.as_ref().map(|f| (f.problem, f.message.clone()))
    }
}

async fn rows(app: &TestApp, tenant: &str) -> Vec<AuditRow> {
    let mut out = Vec::new();
    app.store
        .scan_audit(tenant, 0, |r| {
            out.push(r);
            true
        })
        .await
        .unwrap();
    out
}

fn q(s: &Option<String>) -> String {
    match s {
        Some(v) => format!("'{}'", v.replace('\'', "''")),
        None => "NULL".into(),
    }
}

/// The attacker who recomputes every hash: rewrites row `seq` with `edit`,
/// reseals the chain from there to the head and moves the head.
async fn rewrite_with_recomputed_hashes(app: &TestApp, seq: i64, edit: impl Fn(&mut AuditRow)) {
    let all = rows(app, "acme").await;
    let mut head = (seq - 1, all[(seq - 2) as usize].hash.clone());
    for mut r in all.into_iter().filter(|r| r.seq >= seq) {
        if r.seq == seq {
            edit(&mut r);
        }
        head = chain::seal(&mut r, head.0, &head.1);
        raw_sql(
            app,
            &format!(
                "UPDATE audit_events SET user_id = {}, granted_role = {}, prev_hash = '{}', hash = '{}' \
                 WHERE tenant = 'acme' AND seq = {}",
                q(&r.user_id),
                q(&r.granted_role),
                r.prev_hash,
                r.hash,
                r.seq
            ),
        )
        .await;
    }
    raw_sql(
        app,
        &format!(
            "UPDATE audit_heads SET seq = {}, hash = '{}' WHERE tenant = 'acme'",
            head.0, head.1
        ),
    )
    .await;
}

#[tokio::test]
async fn checkpoints_are_signed_notes_for_the_tenants_audit_keys_only() {
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 3).await;
    let note = checkpoint(&s.app, &s.acme).await;
    let cp = s.key.open_checkpoint(&note).unwrap();
    let head = s.app.store.audit_head("acme").await.unwrap().unwrap();
    assert_eq!(cp.origin, "token-broker/acme");
    assert_eq!(cp.size, head.seq as u64);
    assert!(note.contains("\n\n\u{2014} test-broker "), "{note}");
    // It was appended to the checkpoint file outside the database.
    let file = std::fs::read_to_string(s.dir.path().join("checkpoints.log")).unwrap();
    assert!(file.ends_with(&note));

    // An app key (issue scope), no key, another tenant: never acme's checkpoint.
    let issuer = s.app.create_key("acme", &["issue"]).await;
    assert_eq!(
        s.app.get("/v1/audit/checkpoint", &issuer).await.status(),
        403
    );
    let anon = s
        .app
        .client
        .get(s.app.url("/v1/audit/checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    s.app.create_tenant("globex").await;
    let globex = s.app.create_key("globex", &["audit"]).await;
    let theirs = checkpoint(&s.app, &globex).await;
    let theirs = s.key.open_checkpoint(&theirs).unwrap();
    assert_eq!(theirs.origin, "token-broker/globex");

    // A broker without a checkpoint key says so, with a stable code.
    let plain = spawn_app().await;
    let k = plain.acme().await;
    let r = plain.get("/v1/audit/checkpoint", &k).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "checkpoints_disabled", "{body}");
}

#[tokio::test]
async fn a_rewrite_with_recomputed_hashes_passes_the_chain_but_not_a_signed_checkpoint() {
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    let notes = s.take().await;
    assert_eq!(s.verify(&notes).await, None);
    issue_n(&s.app, &s.acme, 2).await; // history after the checkpoint is fine

    rewrite_with_recomputed_hashes(&s.app, 6, |r| {
        r.user_id = Some("mallory".into());
        r.granted_role = Some("moderator".into());
    })
    .await;
    let chain_only = verify_tenant(&s.app.store, "acme", None).await.unwrap();
    assert!(
        chain_only.ok,
        "the forger recomputed every hash: {chain_only:?}"
    );
    let (problem, message) = s.verify(&notes).await.expect("caught");
    assert_eq!(problem, "rewritten", "{message}");

    // The running broker signs no proof over the forged history...
    let forged = rows(&s.app, "acme").await;
    let r = s
        .app
        .get(
            &format!("/v1/audit/proof?audit_id={}", forged[5].audit_id),
            &s.acme,
        )
        .await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unverifiable", "{body}");
    // ...and its later checkpoints keep the roots it computed from the rows it
    // saw, so the forger is still caught with every checkpoint of the file.
    // (The audited proof request itself was chained onto the broker's true head,
    // so the chain now breaks there too.)
    let all = s.take().await;
    let (problem, _) = s.verify(&all).await.expect("still caught");
    assert!(["rewritten", "broken_link"].contains(&problem), "{problem}");
}

#[tokio::test]
async fn edits_deletions_insertions_and_reordering_are_caught() {
    // Edit in place (hash left alone).
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    let notes = s.take().await;
    raw_sql(
        &s.app,
        "UPDATE audit_events SET granted_role = 'moderator' WHERE tenant = 'acme' AND seq = 6",
    )
    .await;
    assert_eq!(s.verify(&notes).await.unwrap().0, "modified");

    // A row deleted in the middle.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    let notes = s.take().await;
    raw_sql(
        &s.app,
        "DELETE FROM audit_events WHERE tenant = 'acme' AND seq = 5",
    )
    .await;
    assert_eq!(s.verify(&notes).await.unwrap().0, "missing_or_reordered");

    // A row inserted in the middle (later rows shifted up).
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    let notes = s.take().await;
    raw_sql(
        &s.app,
        "UPDATE audit_events SET seq = seq + 1000 WHERE tenant = 'acme' AND seq >= 5",
    )
    .await;
    raw_sql(
        &s.app,
        "UPDATE audit_events SET seq = seq - 999 WHERE tenant = 'acme' AND seq >= 1000",
    )
    .await;
    let cols = token_broker::audit::COLUMNS;
    let rest = cols.split_once(" seq,").unwrap().1;
    raw_sql(
        &s.app,
        &format!(
            "INSERT INTO audit_events ({cols}) SELECT 'forged-row', tenant, 5,{rest} \
             FROM audit_events WHERE tenant = 'acme' AND seq = 4"
        ),
    )
    .await;
    assert!(
        s.verify(&notes).await.is_some(),
        "an inserted row is caught"
    );

    // Two rows swapped, and the swap rehashed into a consistent chain.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    let notes = s.take().await;
    let before = rows(&s.app, "acme").await;
    let (a, b) = (before[5].clone(), before[6].clone());
    rewrite_with_recomputed_hashes(&s.app, 6, move |r| {
        r.user_id = b.user_id.clone();
        r.granted_role = b.granted_role.clone();
    })
    .await;
    rewrite_with_recomputed_hashes(&s.app, 7, move |r| {
        r.user_id = a.user_id.clone();
        r.granted_role = a.granted_role.clone();
    })
    .await;
    assert!(verify_tenant(&s.app.store, "acme", None).await.unwrap().ok);
    assert_eq!(s.verify(&notes).await.unwrap().0, "rewritten");
}

#[tokio::test]
async fn truncation_erasure_and_an_unrecorded_prune_are_caught() {
    // The tail truncated and the head rewound: invisible to the chain alone.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 4).await;
    let notes = s.take().await;
    let all = rows(&s.app, "acme").await;
    let keep = all.len() as i64 - 2;
    raw_sql(
        &s.app,
        &format!("DELETE FROM audit_events WHERE tenant = 'acme' AND seq > {keep}"),
    )
    .await;
    raw_sql(
        &s.app,
        &format!(
            "UPDATE audit_heads SET seq = {keep}, hash = '{}' WHERE tenant = 'acme'",
            all[keep as usize - 1].hash
        ),
    )
    .await;
    assert!(verify_tenant(&s.app.store, "acme", None).await.unwrap().ok);
    assert_eq!(s.verify(&notes).await.unwrap().0, "truncated");

    // The whole tenant erased, head included: it no longer exists for the chain.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 2).await;
    let notes = s.take().await;
    raw_sql(&s.app, "DELETE FROM audit_events WHERE tenant = 'acme'").await;
    raw_sql(&s.app, "DELETE FROM audit_heads WHERE tenant = 'acme'").await;
    assert_eq!(s.verify(&notes).await.unwrap().0, "erased");

    // Old rows deleted and a fake prune point inserted (no prune row in the history).
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 4).await;
    let notes = s.take().await;
    let all = rows(&s.app, "acme").await;
    raw_sql(
        &s.app,
        "DELETE FROM audit_events WHERE tenant = 'acme' AND seq <= 4",
    )
    .await;
    raw_sql(
        &s.app,
        &format!(
            "INSERT INTO audit_prunes (tenant, through_seq, through_hash, rows_deleted, pruned_at_ms) \
             VALUES ('acme', 4, '{}', 4, 0)",
            all[3].hash
        ),
    )
    .await;
    assert!(
        verify_tenant(&s.app.store, "acme", None).await.unwrap().ok,
        "the chain accepts the fake prune point"
    );
    assert_eq!(s.verify(&notes).await.unwrap().0, "unrecorded_prune");
}

#[tokio::test]
async fn a_recorded_prune_keeps_old_checkpoints_and_later_proofs_valid() {
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 3).await;
    let before = s.take().await;
    // Rows created at 1 s (tenant, key) are older than the cut; everything else stays.
    let key = SigningKey::load(&s.dir.path().join("checkpoint.key")).unwrap();
    let p = prune_tenant(&s.app.store, "acme", 1_500, 2_000, Some(&key))
        .await
        .unwrap()
        .expect("something pruned");
    assert!(p.through_seq >= 1);
    let issued = issue_n(&s.app, &s.acme, 2).await;
    let notes = s.take().await;
    assert_eq!(s.verify(&notes).await, None, "{before}");
    // A row after the prune still has an inclusion proof against the new root.
    let id = issued[1]["audit_id"].as_str().unwrap();
    let r = s
        .app
        .get(&format!("/v1/audit/proof?audit_id={id}"), &s.acme)
        .await;
    assert_eq!(r.status(), 200);
    let proof = r.text().await.unwrap();
    verify_proof(&proof, &s.key).unwrap();
}

#[tokio::test]
async fn proofs_round_trip_and_forged_or_foreign_proofs_are_rejected() {
    let s = signed_app().await;
    let issued = issue_n(&s.app, &s.acme, 6).await;
    let t = &issued[2];
    for query in [
        format!("token={}", t["token"].as_str().unwrap()),
        format!("token_id={}", t["token_id"].as_str().unwrap()),
        format!("audit_id={}", t["audit_id"].as_str().unwrap()),
    ] {
        let r = s
            .app
            .get(&format!("/v1/audit/proof?{query}"), &s.acme)
            .await;
        assert_eq!(r.status(), 200, "{query}");
        let proof: Value = r.json().await.unwrap();
        for k in [
            "leaf_index",
            "tree_size",
            "leaf_hash",
            "hashes",
            "root_hash",
            "checkpoint",
        ] {
            assert!(proof.get(k).is_some(), "{k} in {proof}");
        }
        assert_eq!(proof["audit_id"], t["audit_id"]);
        let ok = verify_proof(&proof.to_string(), &s.key).unwrap();
        assert!(ok.contains("token-broker/acme"), "{ok}");
    }
    let r = s
        .app
        .get(
            &format!(
                "/v1/audit/proof?audit_id={}",
                t["audit_id"].as_str().unwrap()
            ),
            &s.acme,
        )
        .await;
    let proof: Value = r.json().await.unwrap();

    // Tampered: another index, a flipped path hash, a leaf that is not the row's.
    let mut p = proof.clone();
    p["leaf_index"] = json!(proof["leaf_index"].as_u64().unwrap() + 1);
    assert!(verify_proof(&p.to_string(), &s.key).is_err());
    let mut p = proof.clone();
    let h = p["hashes"][0].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
    p["hashes"][0] = json!(flipped);
    assert!(verify_proof(&p.to_string(), &s.key).is_err());
    let mut p = proof.clone();
    p["leaf_hash"] = p["hashes"][0].clone();
    p.as_object_mut().unwrap().remove("row_hash");
    assert!(verify_proof(&p.to_string(), &s.key).is_err());

    // Against another key (same name, even): rejected.
    let other_dir = tempfile::tempdir().unwrap();
    let other = SigningKey::generate(&other_dir.path().join("k"), "test-broker").unwrap();
    let err = verify_proof(&proof.to_string(), &other.verifier()).unwrap_err();
    assert!(err.contains("no signature"), "{err}");
    // A checkpoint re-signed by another key over a forged root: rejected by ours.
    let mut p = proof.clone();
    let cp = s
        .key
        .open_checkpoint(p["checkpoint"].as_str().unwrap())
        .unwrap();
    let forged = token_broker::audit::checkpoint::Checkpoint {
        root: [9u8; 32],
        ..cp
    };
    p["checkpoint"] = json!(other.sign(&forged));
    assert!(verify_proof(&p.to_string(), &s.key).is_err());

    // A row that is not there, or is another tenant's: 404, nothing else said.
    let r = s
        .app
        .get(
            "/v1/audit/proof?audit_id=0190b7a0-0000-7000-8000-000000000000",
            &s.acme,
        )
        .await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_row_not_found");
    s.app.create_tenant("globex").await;
    let globex = s.app.create_key("globex", &["audit"]).await;
    let r = s
        .app
        .get(
            &format!(
                "/v1/audit/proof?audit_id={}",
                t["audit_id"].as_str().unwrap()
            ),
            &globex,
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = s
        .app
        .get(
            &format!("/v1/audit/proof?token={}", t["token"].as_str().unwrap()),
            &globex,
        )
        .await;
    assert_eq!(r.status(), 404);
    // Proof requests are audited reads; a presented token only by its fingerprint.
    let reads = s.app.audit(&s.acme, "kind=audit_read&limit=1000").await;
    let text = reads.to_string();
    assert!(text.contains("proof"), "{text}");
    assert!(
        !text.contains(t["token"].as_str().unwrap()),
        "never the token itself"
    );
    // Bad requests name the field.
    let r = s.app.get("/v1/audit/proof?from=3", &s.acme).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_proof_request");

    // Consistency: the history of 4 rows is a prefix of today's.
    let size = proof["tree_size"].as_u64().unwrap();
    let r = s
        .app
        .get(&format!("/v1/audit/proof?from=4&to={size}"), &s.acme)
        .await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    verify_proof(&c.to_string(), &s.key).unwrap();
    let mut bad = c.clone();
    bad["from_size"] = json!(5);
    assert!(verify_proof(&bad.to_string(), &s.key).is_err());
    let mut bad = c.clone();
    if let Some(first) = bad["hashes"][0].as_str().map(str::to_owned) {
        bad["hashes"][0] = json!(format!(
            "{}{}",
            if first.starts_with('f') { "e" } else { "f" },
            &first[1..]
        ));
        assert!(verify_proof(&bad.to_string(), &s.key).is_err());
    }
}

#[tokio::test]
async fn the_broker_writes_checkpoints_by_rows_and_by_time() {
    use token_broker::audit::checkpoint::Checkpointer;
    let s = signed_app().await;
    let file = s.dir.path().join("periodic.log");
    let key = SigningKey::load(&s.dir.path().join("checkpoint.key")).unwrap();
    let c = Checkpointer::new(key, Some(file.clone()), 3);
    let count = || {
        std::fs::read_to_string(&file)
            .map(|t| token_broker::audit::checkpoint::split_notes(&t).len())
            .unwrap_or(0)
    };
    c.round(&s.app.store, true).await;
    assert_eq!(count(), 1, "the first time tick checkpoints the tenant");
    c.round(&s.app.store, true).await;
    assert_eq!(count(), 1, "nothing moved, nothing written");
    issue_n(&s.app, &s.acme, 2).await;
    c.round(&s.app.store, false).await;
    assert_eq!(count(), 1, "2 rows < every 3 rows");
    issue_n(&s.app, &s.acme, 1).await;
    c.round(&s.app.store, false).await;
    assert_eq!(count(), 2, "3 rows: a row-count checkpoint");
    issue_n(&s.app, &s.acme, 1).await;
    c.round(&s.app.store, true).await;
    assert_eq!(count(), 3, "a time tick takes any growth");
    // Every note in the file verifies, and together they cover the history.
    let notes = std::fs::read_to_string(&file).unwrap();
    assert_eq!(s.verify(&notes).await, None);
}

const BIN: &str = env!("CARGO_BIN_EXE_token-broker");

impl Signed {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(BIN)
            .env("TOKEN_BROKER_DATABASE_URL", &self.app.db_url)
            .env("TOKEN_BROKER_DATA_DIR", self.dir.path())
            .env(
                "TOKEN_BROKER_CHECKPOINT_KEY_FILE",
                self.dir.path().join("checkpoint.key"),
            )
            .env(
                "TOKEN_BROKER_CHECKPOINT_FILE",
                self.dir.path().join("checkpoints.log"),
            )
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test]
async fn the_command_line_prints_keys_checkpoints_and_proofs_and_checks_them() {
    let s = signed_app().await;
    let issued = issue_n(&s.app, &s.acme, 4).await;
    let pk = s.cli_ok(&["audit", "checkpoint-key"]);
    assert_eq!(pk.trim(), s.key.to_string());
    let note = s.cli_ok(&["audit", "checkpoint", "--tenant", "acme"]);
    let cp = s.key.open_checkpoint(&note).unwrap();
    assert_eq!(cp.origin, "token-broker/acme");

    let token = issued[1]["token"].as_str().unwrap();
    let proof = s.cli_ok(&[
        "audit", "prove", "--tenant", "acme", "--token", token, "--json",
    ]);
    let pf = s.dir.path().join("proof.json");
    std::fs::write(&pf, &proof).unwrap();
    let ok = s.cli_ok(&[
        "audit",
        "verify-proof",
        pf.to_str().unwrap(),
        "--public-key",
        pk.trim(),
    ]);
    assert!(ok.starts_with("ok:"), "{ok}");
    // A genuine proof relabelled with another row's id: the check passes (the
    // leaf is genuine) but does not vouch for the label.
    let mut relabelled: Value = serde_json::from_str(&proof).unwrap();
    relabelled["audit_id"] = json!("the-row-mallory-means");
    let said = verify_proof(&relabelled.to_string(), &s.key).unwrap();
    assert!(!said.starts_with("row the-row-mallory-means"), "{said}");
    assert!(said.contains("if it re-hashes to"), "{said}");
    let mut forged: Value = serde_json::from_str(&proof).unwrap();
    forged["leaf_index"] = json!(0);
    std::fs::write(&pf, forged.to_string()).unwrap();
    let out = s.cli(&[
        "audit",
        "verify-proof",
        pf.to_str().unwrap(),
        "--public-key",
        pk.trim(),
    ]);
    assert_eq!(out.status.code(), Some(1));

    let size = cp.size.to_string();
    let cons = s.cli_ok(&[
        "audit", "prove", "--tenant", "acme", "--from", "2", "--to", &size, "--json",
    ]);
    std::fs::write(&pf, &cons).unwrap();
    s.cli_ok(&[
        "audit",
        "verify-proof",
        pf.to_str().unwrap(),
        "--public-key",
        pk.trim(),
    ]);

    // verify --checkpoints over the broker's checkpoint file, before and after a forger.
    let file = s.dir.path().join("checkpoints.log");
    let args = [
        "audit",
        "verify",
        "--checkpoints",
        file.to_str().unwrap(),
        "--public-key",
        pk.trim(),
    ];
    s.cli_ok(&args);
    rewrite_with_recomputed_hashes(&s.app, 5, |r| r.user_id = Some("mallory".into())).await;
    let out = s.cli(&args);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("acme: FAILED") && text.contains("rewritten"),
        "{text}"
    );
}

#[test]
fn dev_mode_creates_a_private_checkpoint_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = token_broker::settings::Settings::for_database("sqlite://unused");
    s.data_dir = dir.path().join("data");
    s.checkpoint_key_file = None;
    s.checkpoint_file = None;
    token_broker::dev::ensure_checkpoint_key(&mut s).unwrap();
    let path = s.checkpoint_key_file.clone().unwrap();
    assert!(path.starts_with(&s.data_dir));
    assert!(s.checkpoint_file.as_ref().unwrap().starts_with(&s.data_dir));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let first = SigningKey::load(&path).unwrap().verifier();
    // A second start keeps the key (checkpoints already kept stay verifiable).
    let mut again = s.clone();
    again.checkpoint_key_file = None;
    token_broker::dev::ensure_checkpoint_key(&mut again).unwrap();
    assert_eq!(SigningKey::load(&path).unwrap().verifier(), first);
    // An operator's key is left alone.
    let mut mine = s.clone();
    mine.checkpoint_key_file = Some(dir.path().join("operator.key"));
    token_broker::dev::ensure_checkpoint_key(&mut mine).unwrap();
    assert!(!dir.path().join("operator.key").exists());
}

/// The forger's prune of acme's rows `1..=k`, as far as the database alone
/// allows: reads them and computes their true frontier (so every root still
/// matches), deletes them, inserts the prune point and appends a prune row
/// that records it, carrying `note` as its signed checkpoint when given.
async fn forge_prune(s: &Signed, k: u64, note: Option<&str>) {
    let all = rows(&s.app, "acme").await;
    let tree = token_broker::audit::checkpoint::load(&s.app.store, "acme", None)
        .await
        .unwrap();
    let frontier = token_broker::audit::checkpoint::frontier_at(&tree, k).unwrap();
    let through = &all[k as usize - 1].hash;
    raw_sql(
        &s.app,
        &format!("DELETE FROM audit_events WHERE tenant = 'acme' AND seq <= {k}"),
    )
    .await;
    raw_sql(
        &s.app,
        &format!(
            "INSERT INTO audit_prunes (tenant, through_seq, through_hash, rows_deleted, pruned_at_ms) \
             VALUES ('acme', {k}, '{through}', {k}, 0)"
        ),
    )
    .await;
    let mut row = AuditRow::new(
        "acme",
        token_broker::audit::Kind::AuditPruned,
        token_broker::audit::Outcome::Ok,
        token_broker::audit::Actor::Cli,
        5_000,
    );
    let mut detail = json!({"before_ms": 1, "through_seq": k, "through_hash": through, "rows_deleted": k,
        "merkle_frontier": frontier.iter().map(token_broker::audit::merkle::to_hex).collect::<Vec<_>>()});
    if let Some(n) = note {
        detail["prune_checkpoint"] = json!(n);
    }
    row.detail = Some(detail.to_string());
    token_broker::audit::append(&s.app.store, &mut [row], &mut Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_prune_forged_with_the_true_frontier_but_without_the_key_is_caught() {
    // The attacker reads the rows, computes the true frontier (so every root
    // still matches), deletes them, inserts a prune point and appends a prune
    // row that records it: everything but the operator's signature.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 4).await;
    let notes = s.take().await;
    forge_prune(&s, 4, None).await;
    assert!(verify_tenant(&s.app.store, "acme", None).await.unwrap().ok);
    let (problem, message) = s.verify(&notes).await.expect("caught");
    assert_eq!(problem, "unrecorded_prune", "{message}");

    // The operator who prunes without the checkpoint key is told the same, loudly.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 2).await;
    let notes = s.take().await;
    prune_tenant(&s.app.store, "acme", 1_500, 2_000, None)
        .await
        .unwrap()
        .expect("pruned");
    assert_eq!(s.verify(&notes).await.unwrap().0, "unrecorded_prune");
}

#[tokio::test]
async fn a_head_moved_back_or_deleted_does_not_hide_edited_rows() {
    // The database administrator edits a checkpointed row in place (hash left
    // alone), then moves the head back, or deletes it, so the chain walk stops
    // before the edited row; the Merkle check reads the untouched stored hashes.
    for head in ["moved back", "deleted"] {
        let s = signed_app().await;
        issue_n(&s.app, &s.acme, 5).await;
        let notes = s.take().await;
        let all = rows(&s.app, "acme").await;
        raw_sql(
            &s.app,
            "UPDATE audit_events SET granted_role = 'moderator', user_id = 'mallory' \
             WHERE tenant = 'acme' AND seq = 3",
        )
        .await;
        let sql = match head {
            "moved back" => format!(
                "UPDATE audit_heads SET seq = 2, hash = '{}' WHERE tenant = 'acme'",
                all[1].hash
            ),
            _ => "DELETE FROM audit_heads WHERE tenant = 'acme'".to_owned(),
        };
        raw_sql(&s.app, &sql).await;
        let chain = verify_tenant(&s.app.store, "acme", None).await.unwrap();
        assert!(!chain.ok, "head {head}: the chain walk alone sees it too");
        assert_eq!(chain.fault.unwrap().problem, "head_mismatch", "head {head}");
        let (problem, message) = s.verify(&notes).await.expect("caught");
        assert_eq!(problem, "head_mismatch", "head {head}: {message}");
    }
}

#[tokio::test]
async fn a_row_before_the_chains_start_is_caught() {
    // A fabricated issuance at seq 0 (or below): queries list it, and the
    // chain walk, which starts at seq 1, would never read it.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 3).await;
    let notes = s.take().await;
    let cols = token_broker::audit::COLUMNS;
    let rest = cols.split_once(" seq,").unwrap().1;
    raw_sql(
        &s.app,
        &format!(
            "INSERT INTO audit_events ({cols}) SELECT 'forged-row', tenant, 0,{rest} \
             FROM audit_events WHERE tenant = 'acme' AND seq = \
             (SELECT max(seq) FROM audit_events WHERE tenant = 'acme' AND kind = 'token_issued')"
        ),
    )
    .await;
    let listed = s.app.audit(&s.acme, "kind=token_issued").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["audit_id"] == "forged-row"),
        "the forged row is visible to the tenant: {listed}"
    );
    let chain = verify_tenant(&s.app.store, "acme", None).await.unwrap();
    let f = chain.fault.expect("caught without a checkpoint");
    assert_eq!((f.problem, f.seq), ("outside_chain", 0), "{}", f.message);
    assert_eq!(s.verify(&notes).await.unwrap().0, "outside_chain");
}

#[tokio::test]
async fn an_ordinary_checkpoint_cannot_stand_in_for_a_prune_note() {
    // The forger of `a_prune_forged_with_the_true_frontier_but_without_the_key_is_caught`,
    // who also has a genuine checkpoint of exactly the pruned size: the one the
    // tenant's audit key was served (or one from the file, or from a proof).
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 4).await;
    let note = checkpoint(&s.app, &s.acme).await;
    let k = s.key.open_checkpoint(&note).unwrap().size;
    issue_n(&s.app, &s.acme, 2).await;
    let notes = s.take().await;
    forge_prune(&s, k, Some(&note)).await;
    assert!(verify_tenant(&s.app.store, "acme", None).await.unwrap().ok);
    let (problem, message) = s.verify(&notes).await.expect("caught");
    assert_eq!(problem, "unrecorded_prune", "{message}");

    // A real prune signs a prune note, which the checkpoint file never holds.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 2).await;
    let key = SigningKey::load(&s.dir.path().join("checkpoint.key")).unwrap();
    prune_tenant(&s.app.store, "acme", 1_500, 2_000, Some(&key))
        .await
        .unwrap()
        .expect("pruned");
    let notes = s.take().await;
    assert_eq!(s.verify(&notes).await, None);
    let pruned = rows(&s.app, "acme").await;
    let pruned = pruned.iter().find(|r| r.kind == "audit_pruned").unwrap();
    let detail: Value = serde_json::from_str(pruned.detail.as_deref().unwrap()).unwrap();
    let prune_note = detail["prune_checkpoint"].as_str().unwrap();
    let origin = s.key.open_checkpoint(prune_note).unwrap().origin;
    assert_eq!(origin, "token-broker/acme/prune");
    assert!(!notes.contains("token-broker/acme/prune"));
}

#[tokio::test]
async fn no_consistency_proof_is_signed_over_a_rewritten_history() {
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    s.take().await;
    rewrite_with_recomputed_hashes(&s.app, 6, |r| {
        r.user_id = Some("mallory".into());
        r.granted_role = Some("moderator".into());
    })
    .await;
    let head = rows(&s.app, "acme").await.len();
    let r = s
        .app
        .get(&format!("/v1/audit/proof?from=1&to={head}"), &s.acme)
        .await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unverifiable", "{body}");
}

#[tokio::test]
async fn after_a_restart_the_broker_does_not_sign_a_history_rewritten_while_it_was_down() {
    use token_broker::audit::checkpoint::Checkpointer;
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 5).await;
    s.take().await;
    let key = || SigningKey::load(&s.dir.path().join("checkpoint.key")).unwrap();
    let file = s.dir.path().join("checkpoints.log");
    // A broker (or the command line) starting on the untouched history signs it.
    let fresh = Checkpointer::new(key(), Some(file.clone()), 1);
    assert!(fresh.refresh(&s.app.store, "acme", 1).await.is_ok());

    rewrite_with_recomputed_hashes(&s.app, 6, |r| {
        r.user_id = Some("mallory".into());
        r.granted_role = Some("moderator".into());
    })
    .await;
    let before = std::fs::read_to_string(&file).unwrap();
    let restarted = Checkpointer::new(key(), Some(file.clone()), 1);
    let e = restarted
        .refresh(&s.app.store, "acme", 1)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("checkpoint file"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "nothing was signed over the forged history"
    );
}

#[tokio::test]
async fn proofs_run_one_at_a_time_per_tenant_and_never_hold_up_issuance() {
    // A hostile auditor asks for proofs (each reads the tenant's whole
    // history) in parallel loops. Here one of acme's is held running.
    let s = signed_app().await;
    let issued = issue_n(&s.app, &s.acme, 3).await;
    let id = issued[2]["audit_id"].as_str().unwrap().to_owned();
    checkpoint(&s.app, &s.acme).await;
    s.app.create_tenant("globex").await;
    let globex = s.app.create_key("globex", &["audit"]).await;
    let theirs = s.app.audit(&globex, "limit=1").await;
    let theirs = theirs["items"][0]["audit_id"].as_str().unwrap().to_owned();
    checkpoint(&s.app, &globex).await;

    let (release, hold) = tokio::sync::oneshot::channel::<()>();
    let heavy = s.app.app_state.heavy.clone();
    let running = tokio::spawn(async move {
        heavy
            .run("acme", async move {
                let _ = hold.await;
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // acme's next proofs are refused at once, not queued behind it.
    for q in [format!("audit_id={id}"), "from=1&to=2".to_owned()] {
        let r = s.app.get(&format!("/v1/audit/proof?{q}"), &s.acme).await;
        assert_eq!(r.status(), 429, "{q}");
        assert!(r.headers().get("retry-after").is_some());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "audit_busy", "{body}");
    }
    // Issuance goes on meanwhile.
    issue_n(&s.app, &s.acme, 2).await;
    // Another tenant's proof waits its turn, then gets its answer.
    let (app, key) = (s.app.client.clone(), globex.clone());
    let url = s.app.url(&format!("/v1/audit/proof?audit_id={theirs}"));
    let waiting = tokio::spawn(async move { app.get(url).bearer_auth(key).send().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "globex's proof waits for the running one"
    );
    release.send(()).unwrap();
    running.await.unwrap().unwrap();
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    verify_proof(&r.text().await.unwrap(), &s.key).unwrap();
    // And acme's place is free again.
    let r = s
        .app
        .get(&format!("/v1/audit/proof?audit_id={id}"), &s.acme)
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn verifying_a_named_tenant_against_checkpoints_that_hold_none_of_it_fails() {
    // The file holds only another tenant's checkpoints: acme's chain alone
    // verifies (a forger can recompute it), so "ok" would vouch for nothing.
    let s = signed_app().await;
    issue_n(&s.app, &s.acme, 2).await;
    s.app.create_tenant("globex").await;
    let globex = s.app.create_key("globex", &["audit"]).await;
    let theirs = checkpoint(&s.app, &globex).await;
    let (problem, message) = s.verify(&theirs).await.expect("not ok");
    assert_eq!(problem, "no_checkpoint", "{message}");
    // With acme's own checkpoint in the file, it verifies.
    let both = format!("{theirs}{}", checkpoint(&s.app, &s.acme).await);
    assert_eq!(s.verify(&both).await, None);
}
