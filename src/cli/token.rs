//! `token-broker token inspect TOKEN [--tenant T]`: decodes any of the three
//! formats and, given the tenant, checks the signature with the tenant's
//! credential (from its applied policy) and whether the token has expired.

use clap::Subcommand;
use serde_json::json;

use super::output::{CmdResult, Failure, out, out_json, store_for};
use crate::settings::Settings;
use crate::state::TenantRuntime;
use crate::tokens;

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Decode a token and print its claims; with --tenant, verify it.
    Inspect {
        /// The token (T1==…, or a JWT). Use - to read it from standard input.
        token: String,
        /// Verify the signature with this tenant's credential.
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub async fn run(settings: Settings, cmd: TokenCmd, json: bool) -> CmdResult {
    match cmd {
        TokenCmd::Inspect { token, tenant } => inspect(&settings, token, tenant, json).await,
    }
}

/// `token inspect`: decode, say whether it has expired and, given a tenant,
/// whether its signature verifies (exit 1 when it does not).
async fn inspect(
    settings: &Settings,
    token: String,
    tenant: Option<String>,
    json: bool,
) -> CmdResult {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        s.trim().to_owned()
    } else {
        token
    };
    let insp = tokens::inspect(&token).map_err(|e| Failure {
        message: format!("not a token this broker understands: {e}"),
        code: 1,
    })?;
    let now = crate::clock::now_unix();
    let expired = insp.expired(now);
    let (valid, verification) = match &tenant {
        Some(t) => verify_for_tenant(settings, &insp, t).await?,
        None => (true, serde_json::Value::Null),
    };
    if json {
        out_json(&json!({"token": insp, "expired": expired, "verification": verification}));
    } else {
        out(insp.to_string());
        out(format!("expired: {}", if expired { "yes" } else { "no" }));
        if !verification.is_null() {
            out(format!(
                "signature: {} ({})",
                if valid { "valid" } else { "INVALID" },
                verification["detail"].as_str().unwrap_or_default()
            ));
        }
    }
    if !valid {
        return Err(Failure {
            message: "the signature does not verify".into(),
            code: 1,
        });
    }
    Ok(())
}

/// Checks the token's signature with the tenant's credential for its issuer
/// (from the applied policy): whether it is valid, and the report printed.
async fn verify_for_tenant(
    settings: &Settings,
    insp: &tokens::Inspection,
    t: &str,
) -> Result<(bool, serde_json::Value), Failure> {
    let store = store_for(settings).await?;
    let row = store.current_policy(t).await?.ok_or_else(|| Failure {
        message: format!("tenant {t} has no applied policy"),
        code: 1,
    })?;
    let keyring = crate::startup::load_keyring(settings)?;
    let rt = TenantRuntime::load_from_store(
        &store,
        &super::output::secret_resolver(settings),
        keyring.as_ref(),
        &row,
    )
    .await?
    .map_err(|e| Failure {
        message: e,
        code: 1,
    })?;
    let issuer = insp.issuer().unwrap_or_default();
    let (name, result) = match rt.credential_for(&issuer) {
        None => (
            None,
            Err(format!(
                "tenant {t} has no credential for issuer {issuer:?}"
            )),
        ),
        Some(c) => match &c.signer {
            Err(e) => (
                Some(c.name.clone()),
                Err(format!("credential {} unavailable here: {e}", c.name)),
            ),
            Ok(signer) => (Some(c.name.clone()), Ok(insp.verify(signer))),
        },
    };
    let valid = matches!(&result, Ok(v) if v.valid());
    let verification = json!({
        "tenant": t,
        "credential": name,
        "signature_valid": result.as_ref().map(|v| v.valid()).unwrap_or(false),
        "detail": match &result { Ok(v) => v.to_string(), Err(e) => e.clone() },
    });
    Ok((valid, verification))
}
