//! The master keyring that seals credentials tenants upload (AES-256-GCM,
//! aws-lc). The keyring file lives outside the database (setting
//! `master_key_file`); the database holds only ciphertexts, each with the id of
//! the key that sealed it.
//!
//! File format: one key per line, `tbmk1:<base64 of 32 random bytes>`; `#`
//! comments and blank lines are ignored. The first key seals; every key
//! opens. Rotation: put a new key first and keep the old one below it;
//! restart every broker (each reads the file at start, and until then seals
//! uploads under the old key); run `token-broker credential rekey`; only
//! then drop the old line.
//!
//! Associated data binds a ciphertext to its tenant, credential name, provider
//! and project id: the same bytes copied to another row do not open there.

use std::fmt;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

const PREFIX: &str = "tbmk1:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("master key file {path}: {why}")]
    File { path: String, why: String },
    #[error("no master key with id {0} is configured here")]
    UnknownKey(String),
    #[error("the sealed credential does not open (wrong tenant, name, key or tampered data)")]
    Open,
    #[error("sealing failed")]
    Seal,
}

struct MasterKey {
    id: String,
    key: LessSafeKey,
}

/// The configured master keys; the first seals.
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

/// A sealed secret as stored: the key id, the nonce and the ciphertext with
/// its tag (both base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// The associated data of a stored credential.
pub fn credential_aad(tenant: &str, name: &str, provider: &str, owner_id: &str) -> Vec<u8> {
    let mut v = b"token-broker/credential/v1".to_vec();
    for part in [tenant, name, provider, owner_id] {
        v.push(0);
        v.extend_from_slice(part.as_bytes());
    }
    v
}

fn key_id(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Keyring {
    /// Reads a keyring file. Refuses a file that others can read.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let err = |why: String| KeyringError::File {
            path: path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.kind().to_string()))?;
        if !meta.is_file() || meta.len() > 64 * 1024 {
            return Err(err("not a regular file of at most 64 KiB".into()));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(
                    "readable by group or others; chmod 600 it (it holds the key to every stored credential)"
                        .into(),
                ));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.kind().to_string()))?;
        Keyring::parse(&text).map_err(err)
    }

    /// Parses keyring text (see the module doc).
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = line
                .strip_prefix(PREFIX)
                .and_then(|b| B64.decode(b).ok())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("line {}: expected {PREFIX}<base64 of 32 bytes>", i + 1))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("line {}: not an AES-256 key", i + 1))?;
            keys.push(MasterKey {
                id: key_id(&bytes),
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        Ok(Keyring { keys })
    }

    /// Writes a new keyring file holding one fresh key (mode 0600; refuses to
    /// overwrite). Returns the key's id.
    pub fn generate(path: &Path) -> Result<String, KeyringError> {
        let err = |why: String| KeyringError::File {
            path: path.display().to_string(),
            why,
        };
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| err(e.to_string()))?;
        let id = key_id(&bytes);
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?
        };
        writeln!(
            f,
            "# token-broker master key {id}: keep it outside the database and back it up.\n{PREFIX}{}",
            B64.encode(bytes)
        )
        .and_then(|_| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
        Ok(id)
    }

    /// Ids of the configured keys, the sealing one first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plaintext` under the current key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, KeyringError> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| KeyringError::Seal)?;
        let mut buf = plaintext.to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KeyringError::Seal)?;
        Ok(Sealed {
            key_id: k.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(buf),
        })
    }

    /// Opens a sealed secret bound to `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let k = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| KeyringError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(KeyringError::Open)?;
        let mut buf = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| KeyringError::Open)?;
        let plain = k
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KeyringError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_binding_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let id = Keyring::generate(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(Keyring::generate(&path).is_err(), "never overwrites a key");
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.current_id(), id);
        let aad = credential_aad("acme", "main", "opentok", "123456");
        let sealed = ring.seal(&aad, b"the-secret").unwrap();
        assert!(!sealed.ciphertext.contains("the-secret"));
        assert_eq!(ring.open(&sealed, &aad).unwrap(), b"the-secret");
        let other = credential_aad("evil", "main", "opentok", "123456");
        assert_eq!(ring.open(&sealed, &other), Err(KeyringError::Open));
        let renamed = credential_aad("acme", "main2", "opentok", "123456");
        assert_eq!(ring.open(&sealed, &renamed), Err(KeyringError::Open));
        let mut flipped = sealed.clone();
        flipped.ciphertext = B64.encode(
            B64.decode(&sealed.ciphertext)
                .unwrap()
                .iter()
                .map(|b| b ^ 1)
                .collect::<Vec<_>>(),
        );
        assert_eq!(ring.open(&flipped, &aad), Err(KeyringError::Open));
        // Another keyring cannot open it, and says which key is missing.
        let path2 = dir.path().join("other.key");
        Keyring::generate(&path2).unwrap();
        let ring2 = Keyring::load(&path2).unwrap();
        assert!(matches!(
            ring2.open(&sealed, &aad),
            Err(KeyringError::UnknownKey(_))
        ));
        // A keyring with the new key first and the old one below opens both.
        let both = format!(
            "{}\n{}",
            std::fs::read_to_string(&path2).unwrap(),
            std::fs::read_to_string(&path).unwrap()
        );
        let rotated = Keyring::parse(&both).unwrap();
        assert_eq!(rotated.open(&sealed, &aad).unwrap(), b"the-secret");
        assert_ne!(rotated.current_id(), id);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        Keyring::generate(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(Keyring::parse("tbmk1:short").is_err());
        assert!(Keyring::parse("# only a comment\n").is_err());
    }
}
