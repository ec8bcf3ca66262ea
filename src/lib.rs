//! token-broker: hands out Vonage Video client tokens by per-tenant policy,
//! stamps the caller's identity into them, and audits every decision durably.
//!
//! Reading order:
//! - `domain`: shared types (roles, credential specs, identities); pure.
//! - `tokens`: the three token formats, validation, inspection; pure signers.
//! - `policy`: policy files, the decision engine, policy test cases; pure.
//! - `store`: SQLite/PostgreSQL persistence behind one `Store`.
//! - `secrets`: tenant-confined secret references and the master keyring.
//! - `audit`: audit rows, the hash chain, the group-commit writer.
//! - `auth`: API keys (argon2id once, then a cache) and end users' login JWTs (`auth::idp`);
//!   `limits`: rate limits; `metrics`: Prometheus metrics for `/metrics`.
//! - `state`: what a running broker keeps in memory, and the change feed.
//! - `broker`: the issuance pipeline (decide → stamp → sign → audit).
//! - `admin`: tenant/key/policy operations shared by CLI and HTTP.
//! - `routes`: the HTTP API; `startup`: building and running the server.
//! - `cli*`, `settings`, `telemetry`, `clock`, `dev`: the shell around it;
//!   `remote`: the CLI over HTTP (`--server`) for tenant keys.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cli_audit;
pub mod cli_credential;
pub mod cli_policy;
pub mod cli_token;
pub mod clock;
pub mod console;
pub mod credentials;
pub mod dev;
pub mod domain;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod remote;
pub mod replay;
pub mod routes;
pub mod secrets;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;
