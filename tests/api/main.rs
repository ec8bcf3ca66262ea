#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! The one integration-test binary: every test starts the real server on port 0
//! with a fresh database (SQLite by default; PostgreSQL when TEST_DATABASE_URL
//! points at a server) and talks to it over HTTP.

mod helpers;

mod audit_log;
mod audit_scale;
mod bounded_admin;
mod end_users;
mod errors;
mod health_and_keys;
mod hostile_input;
mod issue_tokens;
mod logins_hardened;
mod policy_admin;
mod real_binary;
mod tenant_credentials;
mod throttling_and_revocation;
