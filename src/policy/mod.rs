//! Policy as code: per-tenant TOML files (`policies/README.md`) validated into
//! a `PolicyDoc`, compiled into a `CompiledPolicy` (rules sorted by priority,
//! globs precompiled), and `decide`, a pure function that says which rule
//! decided, what it clamped and why. Also: the `policy test` case runner and
//! the diff shown before an apply.

pub mod cases;
pub mod decide;
mod diff;
pub mod duration;
pub mod file;
pub mod glob;
pub mod replay;

pub use cases::{CaseReport, cases_policy_path, cases_tenant, run_cases};
pub use decide::{
    Change, Clamped, CompiledPolicy, Decision, DecisionRequest, Expiry, Outcome, RefusalCode,
    RequestError, RuleMiss, SessionFacts, decide,
};
pub use diff::diff;
pub use file::{
    Defaults, Effect, Excess, MAX_IDENTITY_PROVIDERS, MAX_IDP_AUDIENCES, MAX_IDP_PUBLIC_KEYS,
    MAX_LABEL_GLOBS, MAX_POLICY_BYTES, MAX_POLICY_LINES, PolicyDoc, PolicyError, Rule,
    SessionMatch, Source, Subject, parse, parse_stored,
};

#[cfg(test)]
mod tests;
