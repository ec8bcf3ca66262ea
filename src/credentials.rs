//! Tenant-owned video credentials, shared by the CLI and the HTTP API: upload
//! (sealed under the master keyring), list and show (never the secret), delete,
//! and re-seal under a new master key. Each change is one transaction with its
//! project claim, its change-feed row and its audit row (which carries the
//! secret's fingerprint, never the secret).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::{Actor, AdminError};
use crate::audit::{AuditRow, chain};
use crate::domain::OpenTokFormat;
use crate::secrets::{Keyring, Sealed, credential_aad};
use crate::store::{Store, StoreError, StoredCredentialRow};
use crate::tokens::Signer;

/// Longest accepted OpenTok API secret, and private key PEM.
const MAX_API_SECRET: usize = 256;
const MAX_PEM: usize = 16 * 1024;

/// What a tenant admin uploads (`PUT /v1/credentials/{name}`).
#[derive(Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum CredentialInput {
    Opentok {
        api_key: String,
        api_secret: String,
        #[serde(default)]
        token_format: Option<String>,
    },
    Vonage {
        application_id: String,
        private_key: String,
    },
}

/// Shows the public parts only.
impl std::fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialInput::Opentok { api_key, .. } => f
                .debug_struct("Opentok")
                .field("api_key", api_key)
                .finish_non_exhaustive(),
            CredentialInput::Vonage { application_id, .. } => f
                .debug_struct("Vonage")
                .field("application_id", application_id)
                .finish_non_exhaustive(),
        }
    }
}

/// A credential as shown to admins: never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    pub name: String,
    pub provider: String,
    /// `stored` (uploaded, sealed in the database) or `policy` (an operator reference).
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

impl From<&StoredCredentialRow> for CredentialView {
    fn from(r: &StoredCredentialRow) -> CredentialView {
        let opentok = r.provider == "opentok";
        CredentialView {
            name: r.name.clone(),
            provider: r.provider.clone(),
            source: "stored",
            api_key: opentok.then(|| r.owner_id.clone()),
            application_id: (!opentok).then(|| r.owner_id.clone()),
            token_format: r.token_format.clone(),
            fingerprint: Some(r.fingerprint.clone()),
            created_at_ms: Some(r.created_at_ms),
            updated_at_ms: Some(r.updated_at_ms),
            updated_by: Some(r.updated_by.clone()),
        }
    }
}

/// `sha256:` and the first 16 bytes of the secret's SHA-256, in hex: enough
/// to recognise a secret, not to use it.
pub fn fingerprint(secret: &[u8]) -> String {
    format!("sha256:{}", &chain::hex(&Sha256::digest(secret))[..32])
}

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Field {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A checked upload: what gets stored, and the secret to seal.
struct Checked {
    provider: &'static str,
    owner_id: String,
    token_format: Option<String>,
    secret: Vec<u8>,
}

fn check_input(input: CredentialInput) -> Result<Checked, AdminError> {
    match input {
        CredentialInput::Opentok {
            api_key,
            api_secret,
            token_format,
        } => {
            if api_key.is_empty()
                || api_key.len() > 32
                || !api_key.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid(
                    "api_key",
                    "an OpenTok API key is the project's numeric id, e.g. \"123456\"",
                ));
            }
            let s = api_secret.trim();
            if s.is_empty()
                || s.len() > MAX_API_SECRET
                || s.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    "api_secret",
                    format!("the API secret must be 1-{MAX_API_SECRET} printable characters"),
                ));
            }
            let format = match token_format.as_deref() {
                None | Some("jwt") => OpenTokFormat::Jwt,
                Some("t1") => OpenTokFormat::T1,
                Some(_) => {
                    return Err(invalid(
                        "token_format",
                        "use \"jwt\" (HS256, the default) or \"t1\" (legacy)",
                    ));
                }
            };
            Signer::opentok(&api_key, s, format)
                .map_err(|e| invalid("api_secret", e.to_string()))?;
            Ok(Checked {
                provider: "opentok",
                owner_id: api_key,
                token_format: Some(match format {
                    OpenTokFormat::Jwt => "jwt".into(),
                    OpenTokFormat::T1 => "t1".into(),
                }),
                secret: s.as_bytes().to_vec(),
            })
        }
        CredentialInput::Vonage {
            application_id,
            private_key,
        } => {
            let app = application_id.to_ascii_lowercase();
            if !crate::policy::file::valid_uuid(&app) {
                return Err(invalid(
                    "application_id",
                    "a Vonage application id is a UUID, e.g. \"29f760f8-7ce1-46c9-ade3-f2dedee4ed5f\"",
                ));
            }
            if private_key.len() > MAX_PEM {
                return Err(invalid(
                    "private_key",
                    format!("the private key PEM is limited to {MAX_PEM} bytes"),
                ));
            }
            Signer::vonage(&app, private_key.as_bytes()).map_err(|_| {
                invalid(
                    "private_key",
                    "not a usable RSA private key (PEM, PKCS#8 or PKCS#1, of 2048 to 4096 bits)",
                )
            })?;
            Ok(Checked {
                provider: "vonage",
                owner_id: app,
                token_format: None,
                secret: private_key.into_bytes(),
            })
        }
    }
}

/// A credential name: 1-64 of a-z, 0-9, '-' and '_' (as in policy files).
pub fn check_name(name: &str) -> Result<(), AdminError> {
    if crate::policy::file::valid_id(name) {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "a credential name is 1-64 of a-z, 0-9, '-' and '_'",
        ))
    }
}

/// Names of the credentials the tenant's policy in force declares.
async fn policy_credential_names(store: &Store, tenant: &str) -> Result<Vec<String>, AdminError> {
    Ok(match store.current_policy(tenant).await? {
        Some(row) => crate::policy::parse_stored(&row.source_name, &row.source)
            .map(|doc| doc.credentials.into_iter().map(|c| c.name).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    })
}

/// Uploads (creates or replaces) a credential. Returns its view and whether
/// it was created.
pub async fn put(
    store: &Store,
    keyring: Option<&Keyring>,
    tenant: &str,
    name: &str,
    input: CredentialInput,
    actor: &Actor,
    now_ms: i64,
) -> Result<(CredentialView, bool), AdminError> {
    check_name(name)?;
    let keyring = keyring.ok_or(AdminError::NoMasterKey)?;
    if !store.tenant_exists(tenant).await? {
        return Err(AdminError::NoTenant(tenant.to_owned()));
    }
    let checked = check_input(input)?;
    if policy_credential_names(store, tenant)
        .await?
        .iter()
        .any(|n| n == name)
    {
        return Err(AdminError::Conflict(format!(
            "the tenant's policy already declares a credential named {name}; names are unique across policy and stored credentials"
        )));
    }
    let aad = credential_aad(tenant, name, checked.provider, &checked.owner_id);
    let sealed = keyring
        .seal(&aad, &checked.secret)
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    let row = StoredCredentialRow {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        provider: checked.provider.to_owned(),
        owner_id: checked.owner_id,
        token_format: checked.token_format,
        fingerprint: fingerprint(&checked.secret),
        key_id: sealed.key_id,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        updated_by: actor.label(),
    };
    let mut audit = AuditRow::new(
        tenant,
        crate::audit::Kind::CredentialSet,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut audit);
    audit.credential = Some(name.to_owned());
    audit.detail = Some(
        serde_json::json!({
            "provider": row.provider,
            "owner_id": row.owner_id,
            "token_format": row.token_format,
            "fingerprint": row.fingerprint,
            "master_key_id": row.key_id,
        })
        .to_string(),
    );
    let created = crate::audit::retry_head(|| {
        let mut audit = audit.clone();
        let row = &row;
        async move {
            store
                .put_credential(row, &mut audit, crate::audit::chain::seal)
                .await
        }
    })
    .await
    .map_err(|e| {
        crate::admin::claim_error(e, "a session's project must pick exactly one credential")
    })?;
    let mut view = CredentialView::from(&row);
    if !created {
        // The stored row keeps its first creation time.
        if let Some(r) = store.get_credential(tenant, name).await? {
            view = CredentialView::from(&r);
        }
    }
    Ok((view, created))
}

/// Deletes a stored credential.
pub async fn delete(
    store: &Store,
    tenant: &str,
    name: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<(), AdminError> {
    check_name(name)?;
    let existing = store
        .get_credential(tenant, name)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no stored credential {name}")))?;
    let mut audit = AuditRow::new(
        tenant,
        crate::audit::Kind::CredentialDeleted,
        crate::audit::Outcome::Ok,
        crate::audit::Actor::Cli,
        now_ms,
    );
    actor.stamp(&mut audit);
    audit.credential = Some(name.to_owned());
    audit.detail = Some(
        serde_json::json!({"owner_id": existing.owner_id, "fingerprint": existing.fingerprint})
            .to_string(),
    );
    crate::audit::retry_head(|| {
        let mut audit = audit.clone();
        async move {
            store
                .delete_credential(tenant, name, now_ms, &mut audit, crate::audit::chain::seal)
                .await
        }
    })
    .await
    .map_err(|e| match e {
        StoreError::NotFound => AdminError::NotFound(format!("no stored credential {name}")),
        other => AdminError::Store(other),
    })
}

/// The tenant's credentials: stored ones, then the policy's (references only).
pub async fn list(store: &Store, tenant: &str) -> Result<Vec<CredentialView>, AdminError> {
    let mut out: Vec<CredentialView> = store
        .list_credentials(tenant)
        .await?
        .iter()
        .map(CredentialView::from)
        .collect();
    if let Some(row) = store.current_policy(tenant).await?
        && let Ok(doc) = crate::policy::parse_stored(&row.source_name, &row.source)
    {
        for c in doc.credentials {
            let (api_key, application_id, token_format) = match &c.provider {
                crate::domain::Provider::OpenTok {
                    api_key,
                    token_format,
                    ..
                } => (
                    Some(api_key.clone()),
                    None,
                    Some(
                        match token_format {
                            OpenTokFormat::Jwt => "jwt",
                            OpenTokFormat::T1 => "t1",
                        }
                        .to_owned(),
                    ),
                ),
                crate::domain::Provider::Vonage { application_id, .. } => {
                    (None, Some(application_id.clone()), None)
                }
            };
            out.push(CredentialView {
                name: c.name.clone(),
                provider: match c.provider {
                    crate::domain::Provider::OpenTok { .. } => "opentok".into(),
                    crate::domain::Provider::Vonage { .. } => "vonage".into(),
                },
                source: "policy",
                api_key,
                application_id,
                token_format,
                fingerprint: None,
                created_at_ms: None,
                updated_at_ms: None,
                updated_by: None,
            });
        }
    }
    Ok(out)
}

/// One credential by name (stored or from the policy).
pub async fn show(store: &Store, tenant: &str, name: &str) -> Result<CredentialView, AdminError> {
    check_name(name)?;
    list(store, tenant)
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| AdminError::NotFound(format!("no credential {name}")))
}

/// Opens a stored credential into a signer (in memory only).
pub fn open_signer(keyring: Option<&Keyring>, row: &StoredCredentialRow) -> Result<Signer, String> {
    let keyring = keyring.ok_or_else(|| {
        "no master key is configured on this broker (setting master_key_file)".to_owned()
    })?;
    let aad = credential_aad(&row.tenant, &row.name, &row.provider, &row.owner_id);
    let secret = keyring
        .open(
            &Sealed {
                key_id: row.key_id.clone(),
                nonce: row.nonce.clone(),
                ciphertext: row.ciphertext.clone(),
            },
            &aad,
        )
        .map_err(|e| e.to_string())?;
    match row.provider.as_str() {
        "opentok" => {
            let format = match row.token_format.as_deref() {
                Some("t1") => OpenTokFormat::T1,
                _ => OpenTokFormat::Jwt,
            };
            let s =
                std::str::from_utf8(&secret).map_err(|_| "the secret is not text".to_owned())?;
            Signer::opentok(&row.owner_id, s, format).map_err(|e| e.to_string())
        }
        "vonage" => Signer::vonage(&row.owner_id, &secret).map_err(|e| e.to_string()),
        other => Err(format!("unknown provider {other:?}")),
    }
}

/// What `credential rekey` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RekeyReport {
    pub resealed: usize,
    pub already_current: usize,
    /// Credentials no configured key opens (names only).
    pub failed: Vec<String>,
    pub master_key_id: String,
}

/// Re-seals every stored credential under the keyring's current key.
pub async fn rekey(store: &Store, keyring: &Keyring) -> Result<RekeyReport, AdminError> {
    let mut report = RekeyReport {
        master_key_id: keyring.current_id().to_owned(),
        ..RekeyReport::default()
    };
    for row in store.all_credentials().await? {
        if row.key_id == keyring.current_id() {
            report.already_current += 1;
            continue;
        }
        let aad = credential_aad(&row.tenant, &row.name, &row.provider, &row.owner_id);
        let sealed = Sealed {
            key_id: row.key_id.clone(),
            nonce: row.nonce.clone(),
            ciphertext: row.ciphertext.clone(),
        };
        let Ok(secret) = keyring.open(&sealed, &aad) else {
            report.failed.push(format!("{}/{}", row.tenant, row.name));
            continue;
        };
        let new = keyring
            .seal(&aad, &secret)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        if store
            .reseal_credential(
                &row.tenant,
                &row.name,
                (&row.key_id, &row.nonce),
                (&new.key_id, &new.nonce, &new.ciphertext),
            )
            .await?
        {
            report.resealed += 1;
        }
    }
    Ok(report)
}
