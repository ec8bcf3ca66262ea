//! `GET /metrics`: Prometheus metrics (OpenMetrics text) from the Prometheus
//! project's Rust client, `prometheus-client`. docs/operations.md lists every
//! metric with the alert to set on it.
//!
//! Label sets are bounded: routes are the route table's patterns (never a raw
//! path; unmatched requests are `route="unmatched"`), status classes are
//! `1xx`…`5xx`, roles and token formats are fixed enums, refusal codes come
//! from the error catalogue, and tenants are those with a policy loaded (any
//! other name, e.g. one an anonymous client typed into a URL, is `-`). With
//! `metrics_tenant_labels = false` every tenant label is `-`, so `/metrics`
//! names no tenant.
//!
//! Counters kept by other parts (the audit writer's health, the key
//! authenticator, the identity providers) are plain atomics there; they are
//! copied into the registry when `/metrics` is scraped.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// JWKS fetches started by identity providers (process-wide: providers are
/// rebuilt with each policy and do not hold the state).
pub static IDP_FETCHES: AtomicU64 = AtomicU64::new(0);
/// JWKS fetches that failed (unreachable, non-2xx, too large, not a key set).
pub static IDP_FETCH_FAILURES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    pub tenant: String,
    pub role: &'static str,
    pub format: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub tenant: String,
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The audit writer's own instruments (it records them; the registry reads them).
#[derive(Debug, Clone)]
pub struct AuditMetrics {
    pub commit_seconds: Histogram,
    /// The part of `commit_seconds` before the batch's transaction holds its
    /// tenants' chain heads: mostly waiting for another writer's commit
    /// (another instance on the same PostgreSQL, or the CLI).
    pub head_wait_seconds: Histogram,
    pub batch_rows: Histogram,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            commit_seconds: latency_histogram(),
            head_wait_seconds: latency_histogram(),
            // 1 … 4096 rows.
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

/// Counter `c` made equal to the monotonic `v` (copied at scrape time).
fn sync_counter(c: &Counter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    tenant_labels: bool,
    pub tokens_issued: Family<IssuedLabels, Counter>,
    pub tokens_refused: Family<RefusedLabels, Counter>,
    pub moderator_tokens: Counter,
    pub bad_requests: Counter,
    pub audit_unavailable: Counter,
    pub auth_failures: Counter,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub requests: HistogramFamily<RequestLabels>,
    // Copied at scrape time.
    audit_rows: Counter,
    audit_batches: Counter,
    audit_failed_batches: Counter,
    audit_refused_rows: Counter,
    audit_failing: Gauge,
    audit_queue_depth: Gauge,
    key_cache: Family<ResultLabels, Counter>,
    idp_fetches: Family<ResultLabels, Counter>,
}

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    EndUser,
    EndUserIp,
    ApiKey,
    FailedAuthIp,
    /// An address already had `MAX_AUTH_IN_FLIGHT` credential checks running.
    AuthInFlight,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::EndUser => "end_user",
            Limit::EndUserIp => "end_user_ip",
            Limit::ApiKey => "api_key",
            Limit::FailedAuthIp => "failed_auth_ip",
            Limit::AuthInFlight => "auth_in_flight",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&AuditMetrics::default(), true)
    }
}

impl Metrics {
    /// Registers every metric; `audit` are the writer's instruments.
    pub fn new(audit: &AuditMetrics, tenant_labels: bool) -> Metrics {
        let mut r = Registry::with_prefix("token_broker");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            tenant_labels,
            tokens_issued: Family::default(),
            tokens_refused: Family::default(),
            moderator_tokens: Counter::default(),
            bad_requests: Counter::default(),
            audit_unavailable: Counter::default(),
            auth_failures: Counter::default(),
            rate_limited: Family::default(),
            requests: Family::new_with_constructor(latency_histogram),
            audit_rows: Counter::default(),
            audit_batches: Counter::default(),
            audit_failed_batches: Counter::default(),
            audit_refused_rows: Counter::default(),
            audit_failing: Gauge::default(),
            audit_queue_depth: Gauge::default(),
            key_cache: Family::default(),
            idp_fetches: Family::default(),
        };
        m.register_requests(&mut r);
        m.register_audit_and_caches(&mut r, audit);
        // Every limit shows (at 0) from the start, so an alert can watch its rate.
        for l in [
            Limit::EndUser,
            Limit::EndUserIp,
            Limit::ApiKey,
            Limit::FailedAuthIp,
            Limit::AuthInFlight,
        ] {
            let _ = m
                .rate_limited
                .get_or_create(&LimitLabels { limit: l.label() });
        }
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }

    /// The request-path metrics: latency, tokens, refusals, authentication.
    fn register_requests(&self, r: &mut Registry) {
        r.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route pattern, method and status class",
            Unit::Seconds,
            self.requests.clone(),
        );
        r.register(
            "tokens_issued",
            "Tokens issued (each durably audited), by tenant, role and format",
            self.tokens_issued.clone(),
        );
        r.register(
            "tokens_refused",
            "Token requests refused by policy or ownership (audited), by tenant and refusal code",
            self.tokens_refused.clone(),
        );
        r.register(
            "moderator_tokens",
            "Moderator tokens issued",
            self.moderator_tokens.clone(),
        );
        r.register(
            "bad_requests",
            "Token requests rejected as malformed (400)",
            self.bad_requests.clone(),
        );
        r.register(
            "audit_unavailable",
            "Requests answered 503 because the audit row could not be committed",
            self.audit_unavailable.clone(),
        );
        r.register(
            "auth_failures",
            "Failed authentications (API keys and login tokens)",
            self.auth_failures.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused with 429, by limit",
            self.rate_limited.clone(),
        );
    }

    /// The audit writer's metrics (its own instruments and the copies taken
    /// at scrape time) and the key and JWKS caches'.
    fn register_audit_and_caches(&self, r: &mut Registry, audit: &AuditMetrics) {
        r.register_with_unit(
            "audit_commit_duration",
            "Time to commit one audit batch (one transaction)",
            Unit::Seconds,
            audit.commit_seconds.clone(),
        );
        r.register_with_unit(
            "audit_head_wait",
            "Time from the start of an audit batch until its transaction holds its tenants' chain heads (part of the commit duration; grows when instances wait for each other)",
            Unit::Seconds,
            audit.head_wait_seconds.clone(),
        );
        r.register(
            "audit_batch_rows",
            "Rows per committed audit batch",
            audit.batch_rows.clone(),
        );
        r.register(
            "audit_queue_depth",
            "Audit rows waiting for the writer",
            self.audit_queue_depth.clone(),
        );
        r.register(
            "audit_rows",
            "Audit rows committed",
            self.audit_rows.clone(),
        );
        r.register(
            "audit_batches",
            "Audit transactions committed",
            self.audit_batches.clone(),
        );
        r.register(
            "audit_failed_batches",
            "Audit transactions that failed",
            self.audit_failed_batches.clone(),
        );
        r.register(
            "audit_refused_rows",
            "Audit rows refused on their own (each failing only its request)",
            self.audit_refused_rows.clone(),
        );
        r.register(
            "audit_failing",
            "1 while the audit store is failing or stalled",
            self.audit_failing.clone(),
        );
        r.register(
        "key_cache",
        "API key authentications answered from the verified-key cache (hit) or needing a database read and argon2 (miss)",
        self.key_cache.clone(),
    );
        r.register(
            "idp_jwks_fetches",
            "Identity providers' JWKS fetches, by result (ok, failed)",
            self.idp_fetches.clone(),
        );
    }

    pub fn inc(c: &Counter) {
        c.inc();
    }

    /// The tenant label: the slug of a tenant with a loaded policy (when tenant
    /// labels are on), else `-`.
    pub fn tenant_label(&self, tenant: &str, known: bool) -> String {
        if self.tenant_labels && known {
            tenant.to_owned()
        } else {
            "-".to_owned()
        }
    }

    pub fn token_issued(&self, tenant: String, role: &'static str, format: &'static str) {
        self.tokens_issued
            .get_or_create(&IssuedLabels {
                tenant,
                role,
                format,
            })
            .inc();
    }

    pub fn token_refused(&self, tenant: String, code: &'static str) {
        self.tokens_refused
            .get_or_create(&RefusedLabels { tenant, code })
            .inc();
    }

    pub fn rate_limited(&self, l: Limit) {
        self.rate_limited
            .get_or_create(&LimitLabels { limit: l.label() })
            .inc();
    }

    /// Records one HTTP request. `route` is the matched pattern (`None`: unmatched).
    pub fn request(&self, route: Option<String>, method: &str, status: u16, took: Duration) {
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        // Methods outside the standard set are folded (a client picks them).
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "HEAD" | "PATCH" => method,
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.unwrap_or_else(|| "unmatched".into()),
                method: method.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    /// Renders every metric, after copying the writer's, the authenticator's
    /// (both read by the caller into `g`) and the identity providers' counters.
    pub fn render(&self, g: &Gauges) -> String {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        sync_counter(&self.audit_rows, g.audit_committed_rows);
        sync_counter(&self.audit_batches, g.audit_committed_batches);
        sync_counter(&self.audit_failed_batches, g.audit_failed_batches);
        sync_counter(&self.audit_refused_rows, g.audit_refused_rows);
        self.audit_failing.set(i64::from(g.audit_failing));
        self.audit_queue_depth.set(g.audit_queue_depth as i64);
        sync_counter(
            &self
                .key_cache
                .get_or_create(&ResultLabels { result: "hit" }),
            g.key_cache_hits,
        );
        sync_counter(
            &self
                .key_cache
                .get_or_create(&ResultLabels { result: "miss" }),
            g.key_cache_misses,
        );
        let fetches = IDP_FETCHES.load(Ordering::Relaxed);
        let failed = IDP_FETCH_FAILURES.load(Ordering::Relaxed).min(fetches);
        sync_counter(
            &self
                .idp_fetches
                .get_or_create(&ResultLabels { result: "ok" }),
            fetches - failed,
        );
        sync_counter(
            &self
                .idp_fetches
                .get_or_create(&ResultLabels { result: "failed" }),
            failed,
        );
        let mut s = String::with_capacity(16 * 1024);
        let _ = prometheus_client::encoding::text::encode(&mut s, &reg);
        s
    }
}

/// Counters other parts keep themselves (the audit writer, the API-key
/// cache), read at render time (`AppState::gauges`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub audit_committed_rows: u64,
    pub audit_committed_batches: u64,
    pub audit_failed_batches: u64,
    pub audit_refused_rows: u64,
    pub audit_failing: bool,
    pub audit_queue_depth: usize,
    pub key_cache_hits: u64,
    pub key_cache_misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_pattern_and_status_class() {
        let m = Metrics::default();
        m.request(
            Some("/v1/keys/{key_id}".into()),
            "DELETE",
            404,
            Duration::from_millis(3),
        );
        m.request(None, "BREW", 404, Duration::from_millis(1));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(
            &mut s,
            &m.registry.lock().unwrap_or_else(|p| p.into_inner()),
        )
        .unwrap();
        assert!(s.contains(
            "token_broker_http_request_duration_seconds_count{route=\"/v1/keys/{key_id}\",method=\"DELETE\",status=\"4xx\"} 1"
        ), "{s}");
        assert!(s.contains("route=\"unmatched\",method=\"other\""), "{s}");
    }
}
