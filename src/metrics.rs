//! A handful of counters served as Prometheus text at `GET /metrics`.
//! Hand-written: a few atomics do not justify an exporter stack.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub tokens_issued: AtomicU64,
    pub tokens_refused: AtomicU64,
    pub moderator_tokens: AtomicU64,
    pub bad_requests: AtomicU64,
    pub audit_unavailable: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rate_limited_end_user: AtomicU64,
    pub rate_limited_end_user_ip: AtomicU64,
    pub rate_limited_api_key: AtomicU64,
    pub rate_limited_failed_auth: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the counters plus the audit writer's.
    pub fn render(&self, audit: &crate::audit::writer::WriterHealth) -> String {
        let mut s = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, labels: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {v}"
            );
        };
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "token_broker_tokens_issued_total",
            "Tokens issued (each durably audited).",
            "",
            g(&self.tokens_issued),
        );
        counter(
            "token_broker_moderator_tokens_total",
            "Moderator tokens issued.",
            "",
            g(&self.moderator_tokens),
        );
        counter(
            "token_broker_tokens_refused_total",
            "Token requests refused by policy or ownership (audited).",
            "",
            g(&self.tokens_refused),
        );
        counter(
            "token_broker_bad_requests_total",
            "Token requests rejected as malformed (400).",
            "",
            g(&self.bad_requests),
        );
        counter(
            "token_broker_audit_unavailable_total",
            "Requests answered 503 because the audit row could not be committed.",
            "",
            g(&self.audit_unavailable),
        );
        counter(
            "token_broker_auth_failures_total",
            "Failed authentications (API keys and login tokens).",
            "",
            g(&self.auth_failures),
        );
        counter(
            "token_broker_audit_rows_total",
            "Audit rows committed.",
            "",
            g(&audit.committed_rows),
        );
        counter(
            "token_broker_audit_batches_total",
            "Audit transactions committed.",
            "",
            g(&audit.committed_batches),
        );
        counter(
            "token_broker_audit_failed_batches_total",
            "Audit transactions that failed.",
            "",
            g(&audit.failed_batches),
        );
        let _ = writeln!(
            s,
            "# HELP token_broker_rate_limited_total Requests refused with 429.\n# TYPE token_broker_rate_limited_total counter"
        );
        for (kind, c) in [
            ("end_user", &self.rate_limited_end_user),
            ("end_user_ip", &self.rate_limited_end_user_ip),
            ("api_key", &self.rate_limited_api_key),
            ("failed_auth_ip", &self.rate_limited_failed_auth),
        ] {
            let _ = writeln!(
                s,
                "token_broker_rate_limited_total{{limit=\"{kind}\"}} {}",
                g(c)
            );
        }
        let _ = writeln!(
            s,
            "# HELP token_broker_audit_failing 1 while the audit store is failing or stalled.\n# TYPE token_broker_audit_failing gauge\ntoken_broker_audit_failing {}",
            u8::from(audit.failing())
        );
        s
    }
}
