//! Admin work is bounded and runs off the HTTP workers: policy size caps, a
//! time-bounded diff, parsing and secret loading on the blocking pool. Played
//! by two hostile tenant admins dry-running the largest policies allowed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use token_broker::policy::{MAX_LABEL_GLOBS, MAX_POLICY_BYTES, MAX_POLICY_LINES};

use crate::helpers::*;

/// A policy of `rules` rules (8 lines each), every rule's text salted by `salt`.
fn big_policy(tenant: &str, rules: usize, salt: &str) -> String {
    let mut p =
        format!("tenant = \"{tenant}\"\n\n[defaults]\nrole = \"publisher\"\nttl = \"1h\"\n");
    for i in 0..rules {
        p.push_str(&format!(
            "\n[[rules]]\nid = \"r{i}-{salt}\"\npriority = {}\nsubjects = [\"user:u{i}{salt}\"]\nsessions = [\"label:k=v{i}\"]\nroles = [\"publisher\"]\nmax_ttl = \"1h\"\n",
            i + 1
        ));
    }
    p
}

/// The issue's figure (100 ms) is a latency under load, so it is measured
/// alone: `.ci/run` runs it by itself (`-- --ignored --test-threads 1`); in the
/// parallel suite the other tests' load would be what it measured. The test's
/// own clients run on several threads: on one, the /healthz probe waited
/// whenever a hostile client was serializing its policy or parsing a diff
/// (hundreds of KiB, unoptimized in the test build), and measured that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "timing: run alone by .ci/run"]
async fn healthz_stays_fast_while_two_tenants_dry_run_the_largest_policies() {
    healthz_during_largest_dry_runs(2, Duration::from_millis(100)).await;
}

/// The structural half, safe in the parallel suite: with a single HTTP
/// worker, /healthz answers in well under the time one dry run takes, so the
/// dry runs cannot be running on that worker (on it, /healthz would wait for them).
#[tokio::test]
async fn dry_runs_of_the_largest_policies_leave_the_only_worker_free() {
    let (slowest, shortest_dry_run) = healthz_during_largest_dry_runs(1, Duration::MAX).await;
    assert!(
        slowest < shortest_dry_run / 2,
        "healthz took {slowest:?}; a dry run {shortest_dry_run:?}"
    );
}

/// Returns the slowest /healthz and the shortest dry run seen.
async fn healthz_during_largest_dry_runs(workers: usize, bound: Duration) -> (Duration, Duration) {
    let app = spawn_app_with(|s| s.workers = workers).await;
    // As many rules as the caps allow.
    let rules = (MAX_POLICY_LINES - 10) / 9;
    let mut keys = Vec::new();
    for t in ["alpha", "bravo"] {
        app.create_tenant(t).await;
        let key = app.create_key(t, &["admin"]).await;
        let v1 = big_policy(t, rules, "a");
        assert!(v1.len() <= MAX_POLICY_BYTES && v1.lines().count() <= MAX_POLICY_LINES);
        let r = app.post("/v1/policy", &key, &json!({"source": v1})).await;
        assert_eq!(r.status(), 200);
        keys.push((t, key));
    }
    let hostile: Vec<_> = keys
        .iter()
        .map(|(t, key)| {
            let (client, url, key) = (app.client.clone(), app.url("/v1/policy"), key.clone());
            let v2 = big_policy(t, rules, "b");
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut shortest = Duration::MAX;
                for _ in 0..3 {
                    let started = Instant::now();
                    let r = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"source": v2, "dry_run": true}))
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                    let v: Value = r.json().await.unwrap();
                    shortest = shortest.min(started.elapsed());
                    assert!(v["diff"].as_str().is_some(), "{}", &v.to_string()[..200]);
                }
                (statuses, shortest)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while !hostile.iter().all(|h| h.is_finished()) {
        let started = Instant::now();
        let r = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut shortest = Duration::MAX;
    for h in hostile {
        let (statuses, d) = h.await.unwrap();
        assert_eq!(statuses, vec![200, 200, 200]);
        shortest = shortest.min(d);
    }
    assert!(slowest < bound, "healthz took {slowest:?}");
    (slowest, shortest)
}

#[tokio::test]
async fn policies_over_the_caps_are_refused_at_once() {
    let app = spawn_app().await;
    app.create_tenant("alpha").await;
    let key = app.create_key("alpha", &["admin"]).await;
    // Over the line cap (short lines), and over the byte cap (few lines).
    let many_lines = format!(
        "{}{}",
        big_policy("alpha", 2, "x"),
        "# padding\n".repeat(MAX_POLICY_LINES)
    );
    let many_bytes = format!(
        "{}# {}\n",
        big_policy("alpha", 2, "x"),
        "x".repeat(MAX_POLICY_BYTES)
    );
    for source in [many_lines, many_bytes] {
        let started = Instant::now();
        let r = app
            .post(
                "/v1/policy",
                &key,
                &json!({"source": source, "dry_run": true}),
            )
            .await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_policy");
        assert_eq!(v["error"]["field"], "(file)", "{v}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

/// The attacker of review D1: a tenant admin whose `source_name` would be
/// copied into every error location, the version history and the audit chain
/// (huge, or with NUL, which PostgreSQL refuses as a 503). Each is refused at
/// the edge with 400 naming the field, on dry run, apply and replay alike,
/// and nothing is applied.
#[tokio::test]
async fn hostile_source_names_are_refused_at_the_edge() {
    let app = spawn_app().await;
    let key = app.acme().await;
    // A changed policy, so that an apply would write a version.
    let source = format!("{}\n# changed\n", app.standard_policy("acme"));
    let huge = "x".repeat(100_000);
    let long = "y".repeat(129);
    for name in [
        huge.as_str(),
        long.as_str(),
        "a\0b.toml",
        "\u{1b}[2J.toml",
        "acme\n.toml",
        "",
    ] {
        for (path, body) in [
            (
                "/v1/policy",
                json!({"source": source, "source_name": name, "dry_run": true}),
            ),
            ("/v1/policy", json!({"source": source, "source_name": name})),
            (
                "/v1/policy/replay",
                json!({"source": source, "source_name": name}),
            ),
        ] {
            let r = app.post(path, &key, &body).await;
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            let shown = &name[..name.len().min(20)];
            assert_eq!(status, 400, "{path} {shown:?}: {v}");
            assert_eq!(v["error"]["code"], "invalid_source_name", "{v}");
            assert_eq!(v["error"]["field"], "source_name", "{v}");
        }
    }
    let v: Value = app
        .get("/v1/policy/versions", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    // The longest name allowed is taken, and recorded as given.
    let ok = "z".repeat(128);
    let r = app
        .post(
            "/v1/policy",
            &key,
            &json!({"source": source, "source_name": ok}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = app.get("/v1/policy", &key).await.json().await.unwrap();
    assert_eq!(v["source_name"], ok.as_str(), "{v}");
}

/// The other half of D1: one rule with as many invalid subjects as the
/// 256 KiB cap holds (about 87,000, each its own error) under the longest
/// name allowed. The answer lists the first 50 errors by position and says
/// how many more there were: a bounded body (not tens of MB), quickly.
#[tokio::test]
async fn a_policy_with_countless_errors_gets_a_bounded_answer() {
    const REPORTED: usize = 50;
    let app = spawn_app().await;
    app.create_tenant("alpha").await;
    let key = app.create_key("alpha", &["admin"]).await;
    let head = "tenant = \"alpha\"\n\n[[rules]]\nid = \"r\"\npriority = 1\nsessions = [\"*\"]\nroles = [\"publisher\"]\nsubjects = [";
    let n = (MAX_POLICY_BYTES - head.len() - 8) / 3;
    let source = format!("{head}{}]\n", "'',".repeat(n));
    assert!(source.len() <= MAX_POLICY_BYTES);
    let name = "n".repeat(128);
    for (path, body) in [
        (
            "/v1/policy",
            json!({"source": source, "source_name": name, "dry_run": true}),
        ),
        (
            "/v1/policy/replay",
            json!({"source": source, "source_name": name}),
        ),
    ] {
        let started = Instant::now();
        let r = app.post(path, &key, &body).await;
        assert_eq!(r.status(), 400, "{path}");
        let text = r.text().await.unwrap();
        assert!(text.len() < 128 * 1024, "{path}: {} bytes", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "invalid_policy", "{path}");
        assert_eq!(v["error"]["field"], "rules[0].subjects", "{path}");
        let errors = v["error"]["decision"].as_array().unwrap();
        assert_eq!(errors.len(), REPORTED + 1, "{path}");
        let last = errors[REPORTED]["message"].as_str().unwrap();
        assert!(
            last.starts_with(&format!("{} more error", n - REPORTED)),
            "{path}: {last}"
        );
        // In file order: the first errors are the first subjects.
        assert_eq!(errors[0]["column"], 13, "{path}");
        assert_eq!(errors[1]["column"], 16, "{path}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
    }
}

/// The attacker of the policy review's F1: a tenant admin whose label globs
/// (thousands of them, each made to almost match a 256-byte label) made
/// every decision of its tenant cost tens of milliseconds on the shared HTTP
/// worker. Such a policy is refused, naming the field; one within the cap
/// applies, and its decisions still answer.
#[tokio::test]
async fn a_policy_cannot_make_decisions_expensive_with_label_globs() {
    let app = spawn_app().await;
    let key = app.acme().await;
    let near = format!("label:k=*{}b", "a".repeat(45));
    let policy = |globs: usize| {
        // On the last rule, which every caller reaches: each decision
        // tries every glob before `*`.
        let list = vec![format!("{near:?}"); globs].join(", ");
        let text = app.standard_policy("acme");
        let any = "sessions = [\"*\"]";
        let at = text.rfind(any).unwrap();
        format!(
            "{}sessions = [{list}, \"*\"]{}",
            &text[..at],
            &text[at + any.len()..]
        )
    };
    let r = app
        .post(
            "/v1/policy",
            &key,
            &json!({"source": policy(MAX_LABEL_GLOBS + 1), "dry_run": true}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_policy", "{v}");
    assert!(
        v["error"]["field"].as_str().unwrap().ends_with(".sessions"),
        "{v}"
    );
    let r = app
        .post(
            "/v1/policy",
            &key,
            &json!({"source": policy(MAX_LABEL_GLOBS / 2)}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sid = session_for(API_KEY, 3);
    app.put(
        &format!("/v1/sessions/{sid}"),
        &key,
        &json!({"labels": {"k": "a".repeat(256)}}),
    )
    .await;
    let (s, _) = app
        .issue(&key, &json!({"session_id": sid, "user": user("ann")}))
        .await;
    assert_eq!(s, 201);
}
