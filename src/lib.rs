//! token-broker: hands out Vonage Video client tokens by per-tenant policy,
//! stamps the caller's identity into them, and audits every decision durably.
//!
//! Reading order, bottom up (each module imports only modules above it in
//! this list; `tests/api/layers.rs` checks it, docs/design.md draws it):
//! - `domain`: shared types (roles, credential specs, identities, session IDs,
//!   rates); pure, imports nothing else of the crate. `clock`: the one clock.
//! - `tokens`: the three token formats, validation, inspection; pure signers.
//! - `policy`: policy files, the decision engine, policy test cases; pure.
//! - `limits`: rate limiters; `metrics`: Prometheus metrics for `/metrics`.
//! - `store`: SQLite/PostgreSQL persistence behind one `Store`.
//! - `settings`, `telemetry`: the effective settings; logging.
//! - `secrets`: tenant-confined secret references and the master keyring.
//! - `audit`: audit rows, the hash chain, the group-commit writer.
//! - `auth`: API keys (argon2id once, then a cache) and end users' login JWTs (`auth::idp`).
//! - `admin`, `credentials`, `replay`: tenant/key/policy/credential operations
//!   shared by CLI and HTTP.
//! - `state`: what a running broker keeps in memory, and the change feed.
//! - `broker`: the issuance pipeline (decide → stamp → sign → audit).
//! - `routes`: the HTTP API (errors get their status in `routes::error` only);
//!   `console`: the HTML console; `startup`: building and running the server.
//! - `cli`: the command line (`cli::remote`: the CLI over HTTP, `--server`).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod console;
pub mod credentials;
pub mod domain;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod replay;
pub mod routes;
pub mod secrets;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;

// Old flat paths of the CLI modules, kept so code and tests written against
// them (other branches of #12 among them) still build; new code names `cli::*`.
pub use cli::audit as cli_audit;
pub use cli::credential as cli_credential;
pub use cli::dev;
pub use cli::policy as cli_policy;
pub use cli::remote;
pub use cli::token as cli_token;
