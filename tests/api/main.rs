// Tests fail loudly by design; they use real time only to bound latency and
// to poll other servers with a deadline (the broker's time is its Clock); a
// scenario reads top to bottom, as the attacker or operator plays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::too_many_lines)]
//! The one integration-test binary: every test starts the real server on port 0
//! with a fresh database (SQLite by default; PostgreSQL when TEST_DATABASE_URL
//! points at a server) and talks to it over HTTP.

mod helpers;

mod audit_log;
mod audit_proofs;
mod audit_rollup;
mod audit_scale;
mod audit_verify;
mod bounded_admin;
mod console;
mod dev_demo;
mod end_users;
mod errors;
mod health_and_keys;
mod hostile_input;
mod issue_tokens;
mod layers;
mod logins_hardened;
mod metrics;
mod openapi;
mod policy_admin;
mod policy_replay;
mod real_binary;
mod remote_cli;
mod scopes;
mod tenant_credentials;
mod throttling_and_revocation;
mod trusted_proxies;
