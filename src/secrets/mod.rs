//! Secret material a tenant's credentials need, and only its own:
//!
//! - `resolve`: operator-provisioned references (`env:`/`file:` in policy files),
//!   resolved inside the tenant's namespace only, off the async workers, with a
//!   time bound and a size bound, never following a reference out of the namespace.
//! - `keyring`: the master key(s) that seal credentials tenants upload themselves.
//!   The key lives in a file outside the database; each ciphertext is bound to its
//!   tenant, name, provider and project id, so a row copied elsewhere in SQL does
//!   not decrypt.

pub mod keyring;
mod resolve;

pub use keyring::{Keyring, KeyringError, Sealed, credential_aad};
pub use resolve::{Resolved, SecretError, SecretResolver};
