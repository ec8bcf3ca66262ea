//! token-broker: hands out Vonage Video client tokens by per-tenant policy,
//! stamps the caller's identity into them, and audits every decision durably.
//!
//! Reading order: `domain` (shared types) → `tokens` (signers) → `policy`
//! (files and decisions) → `store` (SQLite/PostgreSQL) → `audit` (group-commit
//! writer and hash chain) → `auth` (API keys) → `broker` (the issuance
//! pipeline) → `routes` (HTTP) → `startup` / `cli`.

pub mod clock;
pub mod domain;
pub mod policy;
pub mod tokens;
