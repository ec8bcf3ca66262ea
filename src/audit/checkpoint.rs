//! Signed checkpoints of each tenant's audit history (C2SP `tlog-checkpoint`
//! in a C2SP `signed-note`), the Ed25519 key that signs them (a file, never in
//! the database), and the tenant trees they commit to.
//!
//! A checkpoint of tenant T is the note
//!
//! ```text
//! token-broker/T
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>
//! ```
//!
//! The signature is over the body (the three lines, each ending in `\n`). The
//! key hash is the first 4 bytes of `SHA-256(name || 0x0A || 0x01 || public key)`.
//! The tree is `merkle`'s tree over the tenant's rows `seq = 1..=size`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::merkle::{self, CompactRange, Hash};
use super::{AuditRow, kind};
use crate::store::{Store, StoreError};

/// The origin line of tenant `tenant`'s checkpoints.
pub fn origin(tenant: &str) -> String {
    format!("token-broker/{tenant}")
}

/// The origin of a prune note: the checkpoint of the rows a prune deleted,
/// signed when the operator prunes. Periodic, served and proof checkpoints
/// never carry it, so none of the notes the broker hands out can stand in for
/// a prune that nobody made.
pub fn prune_origin(tenant: &str) -> String {
    format!("token-broker/{tenant}/prune")
}

/// The tenant named by a checkpoint's origin line (a prune note's origin names none).
pub fn tenant_of(origin: &str) -> Option<&str> {
    origin
        .strip_prefix("token-broker/")
        .filter(|t| !t.is_empty() && !t.contains('/'))
}

fn key_hash(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n\x01");
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.contains('+')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Errors about keys and notes (messages never contain key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("{0}")]
    Key(String),
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("the checkpoint carries no signature by key {0}")]
    UnknownKey(String),
    #[error("the checkpoint's signature by {0} does not verify")]
    BadSignature(String),
}

/// The signing key: `PRIVATE+KEY+<name>+<key hash hex>+<base64(0x01 || seed)>`
/// (the format of Go's `golang.org/x/mod/sumdb/note`).
pub struct SigningKey {
    name: String,
    hash: [u8; 4],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_seed(name: &str, seed: &[u8]) -> Result<SigningKey, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(
                "a key name has no spaces or '+' and at most 128 characters".into(),
            ));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::Key("not an Ed25519 seed".into()))?;
        let hash = key_hash(name, pair.public_key().as_ref());
        Ok(SigningKey {
            name: name.to_owned(),
            hash,
            pair,
        })
    }

    /// Parses the key file's text.
    pub fn parse(text: &str) -> Result<SigningKey, NoteError> {
        let bad = || {
            NoteError::Key(
                "the checkpoint key file is not a PRIVATE+KEY+<name>+<hash>+<key> line".into(),
            )
        };
        // The base64 key may itself contain '+'.
        let parts: Vec<&str> = text.trim().splitn(5, '+').collect();
        let [p, k, name, hash, key] = parts[..] else {
            return Err(bad());
        };
        if p != "PRIVATE" || k != "KEY" {
            return Err(bad());
        }
        let raw = B64.decode(key).map_err(|_| bad())?;
        if raw.len() != 33 || raw[0] != 1 {
            return Err(bad());
        }
        let key = SigningKey::from_seed(name, &raw[1..])?;
        if hash != merkle_hex4(&key.hash) {
            return Err(NoteError::Key(
                "the checkpoint key file's key hash does not match its key".into(),
            ));
        }
        Ok(key)
    }

    /// Reads the key file.
    pub fn load(path: &Path) -> Result<SigningKey, NoteError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            NoteError::Key(format!(
                "cannot read checkpoint key file {}: {}",
                path.display(),
                e.kind()
            ))
        })?;
        SigningKey::parse(&text)
    }

    /// Creates a new key file (mode 0600; refuses to overwrite).
    pub fn generate(path: &Path, name: &str) -> Result<SigningKey, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| NoteError::Key(format!("OS RNG failed: {e}")))?;
        let key = SigningKey::from_seed(name, &seed)?;
        let mut raw = vec![1u8];
        raw.extend_from_slice(&seed);
        let text = format!(
            "PRIVATE+KEY+{}+{}+{}\n",
            key.name,
            merkle_hex4(&key.hash),
            B64.encode(&raw)
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            NoteError::Key(format!("cannot create {}: {}", path.display(), e.kind()))
        })?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| {
                NoteError::Key(format!("cannot write {}: {}", path.display(), e.kind()))
            })?;
        Ok(key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key, as `<name>+<key hash hex>+<base64(0x01 || public key)>`.
    pub fn verifier(&self) -> VerifierKey {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        VerifierKey {
            name: self.name.clone(),
            hash: self.hash,
            public,
        }
    }

    /// Signs `body` into a note.
    pub fn sign_note(&self, body: &str) -> String {
        let sig = self.pair.sign(body.as_bytes());
        let mut raw = self.hash.to_vec();
        raw.extend_from_slice(sig.as_ref());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(&raw))
    }

    /// A signed checkpoint.
    pub fn sign(&self, cp: &Checkpoint) -> String {
        self.sign_note(&cp.body())
    }
}

fn merkle_hex4(h: &[u8; 4]) -> String {
    super::chain::hex(h)
}

/// A public verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    hash: [u8; 4],
    public: [u8; 32],
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![1u8];
        raw.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            merkle_hex4(&self.hash),
            B64.encode(&raw)
        )
    }
}

impl VerifierKey {
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let bad = || NoteError::Key("a verifier key is <name>+<key hash hex>+<base64 key>".into());
        let parts: Vec<&str> = text.trim().splitn(3, '+').collect();
        let [name, hash, key] = parts[..] else {
            return Err(bad());
        };
        if !valid_name(name) {
            return Err(bad());
        }
        let raw = B64.decode(key).map_err(|_| bad())?;
        if raw.len() != 33 || raw[0] != 1 {
            return Err(bad());
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&raw[1..]);
        let want = key_hash(name, &public);
        if hash != merkle_hex4(&want) {
            return Err(NoteError::Key(
                "the verifier key's hash does not match its name and key".into(),
            ));
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            hash: want,
            public,
        })
    }

    /// Reads a key given inline or as a file path.
    pub fn from_arg(arg: &str) -> Result<VerifierKey, NoteError> {
        match VerifierKey::parse(arg) {
            Ok(k) => Ok(k),
            Err(e) if !Path::new(arg).is_file() => Err(e),
            Err(_) => {
                let text = std::fs::read_to_string(arg).map_err(|e| {
                    NoteError::Key(format!("cannot read key file {arg}: {}", e.kind()))
                })?;
                VerifierKey::parse(&text)
            }
        }
    }

    /// Checks a note's signature by this key; returns the body.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let Some(split) = note.find("\n\n") else {
            return Err(NoteError::Malformed("no blank line after the body"));
        };
        let body = &note[..split + 1];
        let sigs = &note[split + 2..];
        if !sigs.ends_with('\n') || sigs.is_empty() {
            return Err(NoteError::Malformed(
                "signature lines must end in a newline",
            ));
        }
        let mut found = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(
                    "a signature line starts with an em dash",
                ));
            };
            let Some((name, sig)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(
                    "a signature line is '— name signature'",
                ));
            };
            let Ok(raw) = B64.decode(sig) else {
                return Err(NoteError::Malformed("a signature is base64"));
            };
            if name != self.name || raw.len() != 68 || raw[..4] != self.hash {
                continue;
            }
            found = true;
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(body.as_bytes(), &raw[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(NoteError::UnknownKey(self.to_string()));
        }
        Ok(body)
    }

    /// Verifies a signed checkpoint and parses its body.
    pub fn open_checkpoint(&self, note: &str) -> Result<Checkpoint, NoteError> {
        Checkpoint::parse_body(self.open(note)?)
    }
}

/// A checkpoint body: origin, tree size, root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    pub fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
        let lines: Vec<&str> = body.strip_suffix('\n').unwrap_or("").split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(NoteError::Malformed(
                "a checkpoint body is origin, size and root",
            ));
        };
        if origin.is_empty() {
            return Err(NoteError::Malformed("empty origin"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(NoteError::Malformed("the tree size is a decimal number"));
        }
        let size = size
            .parse()
            .map_err(|_| NoteError::Malformed("the tree size is a decimal number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::Malformed("the root hash is 32 bytes in base64"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Each tenant's largest checkpoint in the checkpoint file at `path` (and its
/// note), read line by line; only those notes' signatures are checked (by
/// `key`), so a long file costs one read. A missing file holds none.
fn largest_written(path: &Path, key: &VerifierKey) -> HashMap<String, (Checkpoint, String)> {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(path) else {
        return HashMap::new();
    };
    let mut largest: HashMap<String, (u64, String)> = HashMap::new();
    let mut keep = |note: String| {
        let mut lines = note.lines();
        let (Some(o), Some(size)) = (lines.next(), lines.next()) else {
            return;
        };
        let (Some(t), Ok(size)) = (tenant_of(o), size.parse::<u64>()) else {
            return;
        };
        if largest.get(t).is_none_or(|(s, _)| size > *s) {
            largest.insert(t.to_owned(), (size, note));
        }
    };
    let mut cur = String::new();
    let mut in_sigs = false;
    for line in std::io::BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        if in_sigs && !line.starts_with('\u{2014}') {
            keep(std::mem::take(&mut cur));
            in_sigs = false;
        }
        if line.trim().is_empty() && cur.is_empty() {
            continue;
        }
        if line.is_empty() {
            in_sigs = true;
        }
        cur.push_str(&line);
        cur.push('\n');
    }
    if !cur.trim().is_empty() {
        keep(cur);
    }
    largest
        .into_iter()
        .filter_map(|(t, (_, note))| match key.open_checkpoint(&note) {
            Ok(cp) => Some((t, (cp, note))),
            Err(e) => {
                tracing::error!(tenant = %t, error = %e, "a checkpoint in the checkpoint file does not open with this broker's key");
                None
            }
        })
        .collect()
}

/// Splits a file of concatenated notes (as the checkpoint file holds) into notes.
/// A note ends after its last signature line, before the next origin line.
pub fn split_notes(text: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let mut cur = String::new();
    let mut in_sigs = false;
    for line in text.split_inclusive('\n') {
        if in_sigs && !line.starts_with('\u{2014}') {
            notes.push(std::mem::take(&mut cur));
            in_sigs = false;
        }
        if line.trim().is_empty() && cur.is_empty() {
            continue;
        }
        if line == "\n" {
            in_sigs = true;
        }
        cur.push_str(line);
    }
    if !cur.trim().is_empty() {
        notes.push(cur);
    }
    notes
}

/// Why a tenant's tree cannot be built from the database.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the history starts at a prune point (seq {0}) that no audit_pruned row in it records")]
    UnrecordedPrune(i64),
    #[error("expected seq {expected}, found seq {found}: a row is missing or out of order")]
    Gap { expected: i64, found: i64 },
    #[error("row seq {0} has a malformed hash")]
    BadHash(i64),
    /// The database no longer holds the history of a checkpoint this broker
    /// signed before (its checkpoint file): it was changed while the broker
    /// was not looking, and the broker will not sign it.
    #[error("the history no longer matches the checkpoint of {0} rows in the checkpoint file")]
    Diverged(u64),
}

/// A tenant's tree as the database holds it: the frontier of the pruned
/// leaves and the leaf hashes of the rows still present (when kept).
#[derive(Debug, Clone, Default)]
pub struct TenantTree {
    pub pruned: u64,
    pub frontier: Vec<Hash>,
    /// The signed checkpoint of the pruned rows, from the prune row.
    pub prune_note: Option<String>,
    pub leaves: Vec<Hash>,
    /// The streaming tree of every row.
    pub range: CompactRange,
    /// The leaf index of the row `load` was asked to find, when present.
    pub found: Option<u64>,
}

impl TenantTree {
    pub fn tree(&self) -> merkle::Tree<'_> {
        // `pruned` and `frontier` come from a matched prune row; a mismatch is
        // reported by `load`, so this cannot fail here.
        merkle::Tree::new(self.pruned, &self.frontier, &self.leaves)
            .unwrap_or_else(|| unreachable!("frontier checked in load"))
    }
}

/// The prune rows' detail field that carries the frontier.
pub const FRONTIER_FIELD: &str = "merkle_frontier";

/// Reads a tenant's rows in order and builds its tree (32 bytes a row in
/// memory). With `find`, also notes the leaf index of that audit id (for a
/// proof), without keeping any other row's id.
/// A history that starts at a prune point must contain the `audit_pruned` row
/// that records that point (same `through_seq` and `through_hash`) with its
/// frontier; otherwise the prune was not recorded and the tree is refused.
pub async fn load(
    store: &Store,
    tenant: &str,
    find: Option<&str>,
) -> Result<TenantTree, TreeError> {
    let start = store.last_prune(tenant).await?;
    let (k, k_hash) = start
        .map(|p| (p.through_seq, p.through_hash))
        .unwrap_or((0, String::new()));
    let mut leaves = Vec::new();
    let mut found = None;
    let mut frontier: Option<Vec<Hash>> = if k == 0 { Some(Vec::new()) } else { None };
    let mut prune_note = None;
    let mut fault: Option<TreeError> = None;
    let mut expected = k + 1;
    store
        .scan_audit(tenant, k, |row: AuditRow| {
            if row.seq != expected {
                fault = Some(TreeError::Gap {
                    expected,
                    found: row.seq,
                });
                return false;
            }
            expected += 1;
            let Some(leaf) = merkle::row_leaf(&row.hash) else {
                fault = Some(TreeError::BadHash(row.seq));
                return false;
            };
            if frontier.is_none()
                && row.kind == kind::AUDIT_PRUNED
                && let Some((f, n)) = recorded_frontier(&row, k, &k_hash)
            {
                frontier = Some(f);
                prune_note = n;
            }
            if find == Some(row.audit_id.as_str()) {
                found = Some((row.seq - 1) as u64);
            }
            leaves.push(leaf);
            true
        })
        .await?;
    if let Some(f) = fault {
        return Err(f);
    }
    let frontier = frontier.ok_or(TreeError::UnrecordedPrune(k))?;
    let mut range =
        CompactRange::from_frontier(k as u64, &frontier).ok_or(TreeError::UnrecordedPrune(k))?;
    for l in &leaves {
        range.push(*l);
    }
    Ok(TenantTree {
        pruned: k as u64,
        frontier,
        prune_note,
        leaves,
        range,
        found,
    })
}

/// The frontier an `audit_pruned` row records, when it records the prune
/// point `(k, k_hash)`.
fn recorded_frontier(row: &AuditRow, k: i64, k_hash: &str) -> Option<(Vec<Hash>, Option<String>)> {
    let d: serde_json::Value = serde_json::from_str(row.detail.as_deref()?).ok()?;
    if d.get("through_seq")?.as_i64()? != k || d.get("through_hash")?.as_str()? != k_hash {
        return None;
    }
    let f = d
        .get(FRONTIER_FIELD)?
        .as_array()?
        .iter()
        .map(|h| merkle::from_hex(h.as_str()?))
        .collect::<Option<Vec<Hash>>>()?;
    let note = d
        .get(PRUNE_NOTE_FIELD)
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    Some((f, note))
}

/// The prune rows' detail field with the checkpoint of the pruned rows, signed
/// by the operator's checkpoint key when the prune was made.
pub const PRUNE_NOTE_FIELD: &str = "prune_checkpoint";

/// The frontier of the first `k` leaves of `t` (for the prune that deletes rows `1..=k`).
pub fn frontier_at(t: &TenantTree, k: u64) -> Option<Vec<Hash>> {
    if k < t.pruned || k > t.pruned + t.leaves.len() as u64 {
        return None;
    }
    let mut r = CompactRange::from_frontier(t.pruned, &t.frontier)?;
    for l in &t.leaves[..(k - t.pruned) as usize] {
        r.push(*l);
    }
    Some(r.frontier())
}

/// The broker's checkpointer, when a checkpoint key is configured (app data of the HTTP routes).
#[derive(Debug, Clone, Default)]
pub struct Checkpoints(pub Option<std::sync::Arc<Checkpointer>>);

impl Checkpoints {
    /// Loads the key named by the settings; a configured key that cannot be
    /// read stops the start (an operator mistake must fail loudly).
    pub fn from_settings(settings: &crate::settings::Settings) -> anyhow::Result<Checkpoints> {
        let Some(path) = &settings.checkpoint_key_file else {
            tracing::warn!(
                "no checkpoint key (setting checkpoint_key_file): audit checkpoints are not signed"
            );
            return Ok(Checkpoints(None));
        };
        let key = SigningKey::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(verifier_key = %key.verifier(), file = ?settings.checkpoint_file, "audit checkpoints are signed");
        Ok(Checkpoints(Some(std::sync::Arc::new(Checkpointer::new(
            key,
            settings.checkpoint_file.clone(),
            settings.checkpoint_every_rows,
        )))))
    }
}

/// Keeps every tenant's latest checkpoint, appends new ones to the checkpoint
/// file, and serves them. Each tenant's tree is kept as a streaming range
/// (O(log n) memory) and advanced by reading only the rows added since.
pub struct Checkpointer {
    key: SigningKey,
    file: Option<PathBuf>,
    every_rows: u64,
    /// One lock per tenant: a tenant's (first, full) scan never holds up another's.
    tenants: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<Option<TenantState>>>>>,
    file_lock: Mutex<()>,
    /// Tenants whose history could not be checkpointed: retried on time ticks
    /// only, not every second (a damaged history is not rescanned constantly).
    failed: Mutex<std::collections::HashSet<String>>,
    /// The largest checkpoint of each tenant in the checkpoint file when this
    /// broker started (read once, on first use).
    written: tokio::sync::OnceCell<HashMap<String, (Checkpoint, String)>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("key", &self.key)
            .field("file", &self.file)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct TenantState {
    range: CompactRange,
    /// The latest checkpoint written (note text) and its size.
    latest: Option<(u64, String)>,
}

impl Checkpointer {
    pub fn new(key: SigningKey, file: Option<PathBuf>, every_rows: u64) -> Checkpointer {
        Checkpointer {
            key,
            file,
            every_rows,
            tenants: Mutex::new(HashMap::new()),
            file_lock: Mutex::new(()),
            failed: Mutex::new(Default::default()),
            written: tokio::sync::OnceCell::new(),
        }
    }

    /// The largest checkpoint of `tenant` that the checkpoint file held when
    /// this broker started, with its note, when its signature is this key's.
    async fn written(&self, tenant: &str) -> Option<(Checkpoint, String)> {
        let written = self
            .written
            .get_or_init(|| async {
                let (path, key) = (self.file.clone(), self.key.verifier());
                let Some(path) = path else {
                    return HashMap::new();
                };
                tokio::task::spawn_blocking(move || largest_written(&path, &key))
                    .await
                    .unwrap_or_default()
            })
            .await;
        written.get(tenant).cloned()
    }

    pub fn verifier(&self) -> VerifierKey {
        self.key.verifier()
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The latest checkpoint this broker signed for `tenant` (note text), if any yet.
    pub async fn latest(&self, tenant: &str) -> Option<String> {
        let slot = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()?;
        let slot = slot.lock().await;
        slot.as_ref()?.latest.as_ref().map(|(_, note)| note.clone())
    }

    /// Brings `tenant`'s checkpoint up to its current history and returns the
    /// latest note. A new checkpoint is signed and appended when the history
    /// grew since the last one (or always, with `force`); with `min_rows`,
    /// only when it grew by at least that many rows.
    pub async fn refresh(
        &self,
        store: &Store,
        tenant: &str,
        min_rows: u64,
    ) -> Result<Option<String>, TreeError> {
        let slot = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if slot.is_none() {
            let t = load(store, tenant, None).await?;
            // After a restart, the history must still be the one this broker
            // signed before: a rewrite made while it was down is not signed.
            let latest = match self.written(tenant).await {
                Some((cp, note)) => {
                    let tree = t.tree();
                    let same = cp.size < t.pruned
                        || (cp.size <= tree.size() && tree.root(cp.size).ok() == Some(cp.root));
                    if !same {
                        return Err(TreeError::Diverged(cp.size));
                    }
                    (cp.size >= t.pruned).then_some((cp.size, note))
                }
                None => None,
            };
            *slot = Some(TenantState {
                range: t.range,
                latest,
            });
        }
        let Some(st) = slot.as_mut() else {
            return Ok(None);
        };
        // Only rows up to the stored head: a batch being committed right now
        // is left for the next checkpoint.
        let head = store.audit_head(tenant).await?.map(|h| h.seq).unwrap_or(0) as u64;
        let mut fault = None;
        let mut next = st.range.size() + 1;
        let mut range = st.range.clone();
        store
            .scan_audit(tenant, range.size() as i64, |row| {
                if row.seq as u64 > head {
                    return false;
                }
                if row.seq as u64 != next {
                    fault = Some(TreeError::Gap {
                        expected: next as i64,
                        found: row.seq,
                    });
                    return false;
                }
                let Some(leaf) = merkle::row_leaf(&row.hash) else {
                    fault = Some(TreeError::BadHash(row.seq));
                    return false;
                };
                range.push(leaf);
                next += 1;
                true
            })
            .await?;
        if let Some(f) = fault {
            return Err(f);
        }
        st.range = range;
        let size = st.range.size();
        let written = st.latest.as_ref().map(|(s, _)| *s);
        let grew = written
            .map(|w| size.saturating_sub(w))
            .unwrap_or(size.max(1));
        if written != Some(size) && grew >= min_rows.max(1) && size > 0 {
            let note = self.key.sign(&Checkpoint {
                origin: origin(tenant),
                size,
                root: st.range.root(),
            });
            self.append(&note);
            st.latest = Some((size, note));
        }
        Ok(st.latest.as_ref().map(|(_, n)| n.clone()))
    }

    fn append(&self, note: &str) {
        let Some(path) = &self.file else { return };
        let _g = self.file_lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(note.as_bytes()).and_then(|_| f.sync_data()));
        if let Err(e) = r {
            tracing::error!(file = %path.display(), error = %e, "cannot append the audit checkpoint");
        }
    }

    /// One round of the periodic writer: every tenant whose history grew by
    /// `every_rows` (or, on a time tick, by any row) gets a new checkpoint.
    pub async fn round(&self, store: &Store, time_tick: bool) {
        let heads = match store.audit_heads().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint round: cannot read the heads");
                return;
            }
        };
        for h in heads {
            let failed = |f: &Self| {
                f.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&h.tenant)
            };
            if !time_tick && failed(self) {
                continue;
            }
            let min = if time_tick { 1 } else { self.every_rows };
            let r = self.refresh(store, &h.tenant, min).await;
            let mut set = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(_) => {
                    set.remove(&h.tenant);
                }
                Err(e) => {
                    tracing::error!(tenant = %h.tenant, error = %e, "cannot checkpoint the tenant's audit history");
                    set.insert(h.tenant.clone());
                }
            }
        }
    }

    /// Runs the periodic writer: a row check every second, a full round every `interval`.
    pub async fn run(self: std::sync::Arc<Self>, store: Store, interval: std::time::Duration) {
        let mut since_full = std::time::Duration::ZERO;
        let step = std::time::Duration::from_secs(1).min(interval);
        loop {
            tokio::time::sleep(step).await;
            since_full += step;
            let full = since_full >= interval;
            if full {
                since_full = std::time::Duration::ZERO;
            }
            self.round(&store, full).await;
        }
    }
}

/// What a signed-checkpoint check found wrong with a tenant's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignedFault {
    /// The size of the checkpoint that caught it.
    pub size: u64,
    /// `erased` | `truncated` | `rewritten` | `unrecorded_prune` | `missing_or_reordered` | `modified`
    pub problem: &'static str,
    pub message: String,
}

/// Reads the notes of a checkpoint file (or a single note), checking each
/// one's signature by `key`; returns `(tenant, checkpoint)` pairs.
pub fn open_checkpoints(
    text: &str,
    key: &VerifierKey,
) -> Result<Vec<(String, Checkpoint)>, NoteError> {
    let mut out = Vec::new();
    for note in split_notes(text) {
        let cp = key.open_checkpoint(&note)?;
        let tenant = tenant_of(&cp.origin)
            .ok_or(NoteError::Malformed(
                "the origin is not token-broker/<tenant>",
            ))?
            .to_owned();
        out.push((tenant, cp));
    }
    Ok(out)
}

/// Checks a tenant's history in the database against its signed checkpoints
/// (any order). The chain links and row contents are checked by the chain
/// verifier; this checks that the rows (by their chain hashes) still form the
/// trees the checkpoints signed, so an edit, deletion, insertion, reordering or
/// truncation of rows covered by a checkpoint is caught even when every hash
/// was recomputed.
pub async fn verify_tenant_signed(
    store: &Store,
    tenant: &str,
    checkpoints: &[Checkpoint],
    key: &VerifierKey,
) -> Result<Option<SignedFault>, StoreError> {
    let Some(largest) = checkpoints.iter().map(|c| c.size).max() else {
        return Ok(None);
    };
    let t = match load(store, tenant, None).await {
        Ok(t) => t,
        Err(e) => return load_fault(e, largest).map(Some),
    };
    if let Some(f) = prune_fault(&t, tenant, key, largest) {
        return Ok(Some(f));
    }
    let tree = t.tree();
    let mut sorted: Vec<&Checkpoint> = checkpoints.iter().collect();
    sorted.sort_by_key(|c| c.size);
    for cp in sorted {
        if let Some(f) = size_fault(&tree, cp) {
            return Ok(Some(f));
        }
        // Checkpoints older than the recorded prune point are covered by the
        // prune row (itself covered by any later checkpoint).
        if cp.size < t.pruned {
            continue;
        }
        if let Some(f) = root_fault(&tree, cp)? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// The fault of a history that cannot even be loaded as a tree (reported
/// against the `largest` checkpoint), or the store's error.
fn load_fault(e: TreeError, largest: u64) -> Result<SignedFault, StoreError> {
    Ok(match e {
        TreeError::Store(e) => return Err(e),
        TreeError::UnrecordedPrune(k) => SignedFault {
            size: largest,
            problem: "unrecorded_prune",
            message: format!(
                "the history starts after seq {k}, but no audit_pruned row in it records that prune point: rows were deleted"
            ),
        },
        e @ TreeError::Gap { .. } => SignedFault {
            size: largest,
            problem: "missing_or_reordered",
            message: e.to_string(),
        },
        TreeError::Diverged(size) => SignedFault {
            size,
            problem: "rewritten",
            message: e_diverged(size),
        },
        e @ TreeError::BadHash(_) => SignedFault {
            size: largest,
            problem: "modified",
            message: e.to_string(),
        },
    })
}

fn e_diverged(size: u64) -> String {
    format!(
        "the first {size} rows do not hash to the root the broker signed for them: a row among them was edited, inserted, deleted, reordered or rehashed"
    )
}

/// A prune point is accepted only with the prune row's checkpoint of the
/// pruned rows, signed by the key as a prune note (`prune_origin`): the
/// database alone cannot make one, and an ordinary checkpoint of the same
/// size (from the checkpoint file, the API or a proof) is not one.
fn prune_fault(
    t: &TenantTree,
    tenant: &str,
    key: &VerifierKey,
    largest: u64,
) -> Option<SignedFault> {
    if t.pruned == 0 {
        return None;
    }
    let want = CompactRange::from_frontier(t.pruned, &t.frontier).map(|r| r.root());
    let signed = t
        .prune_note
        .as_deref()
        .and_then(|n| key.open_checkpoint(n).ok())
        .is_some_and(|cp| {
            cp.origin == prune_origin(tenant) && cp.size == t.pruned && Some(cp.root) == want
        });
    (!signed).then(|| SignedFault {
        size: largest,
        problem: "unrecorded_prune",
        message: format!(
            "the history starts after seq {}, and its prune row carries no checkpoint of the pruned rows signed by this key: rows were deleted",
            t.pruned
        ),
    })
}

/// Whether the history still has as many rows as checkpoint `cp` signed
/// (else it was erased or truncated).
fn size_fault(tree: &merkle::Tree<'_>, cp: &Checkpoint) -> Option<SignedFault> {
    if cp.size > tree.size() {
        let (problem, message) = if tree.size() == 0 {
            (
                "erased",
                format!(
                    "a signed checkpoint says the tenant had {} rows, and the database has none: the tenant's history was erased",
                    cp.size
                ),
            )
        } else {
            (
                "truncated",
                format!(
                    "a signed checkpoint says the history had {} rows, and it has {}: the tail was truncated",
                    cp.size,
                    tree.size()
                ),
            )
        };
        return Some(SignedFault {
            size: cp.size,
            problem,
            message,
        });
    }
    None
}

/// Whether the first rows still hash to the root checkpoint `cp` signed
/// (else one was rewritten).
fn root_fault(tree: &merkle::Tree<'_>, cp: &Checkpoint) -> Result<Option<SignedFault>, StoreError> {
    let root = tree
        .root(cp.size)
        .map_err(|_| StoreError::Invalid("tree".into()))?;
    if root != cp.root {
        return Ok(Some(SignedFault {
            size: cp.size,
            problem: "rewritten",
            message: format!(
                "the first {} rows do not hash to the signed root: a row among them was edited, inserted, deleted, reordered or rehashed",
                cp.size
            ),
        }));
    }
    Ok(None)
}

/// An inclusion proof of one row against a signed checkpoint (hashes in hex).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// `SHA-256(0x00 || row_hash bytes)`.
    pub leaf_hash: String,
    pub hashes: Vec<String>,
    pub root_hash: String,
    /// The signed checkpoint (note text) of `tree_size` and `root_hash`.
    pub checkpoint: String,
    /// The row proven: its audit id and chain hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_hash: Option<String>,
}

/// A consistency proof that the tree of `to_size` extends the tree of `from_size`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsistencyProof {
    pub from_size: u64,
    pub to_size: u64,
    pub from_root: String,
    pub to_root: String,
    pub hashes: Vec<String>,
    /// Signed checkpoints of both sizes. Compare `old_checkpoint` with the one
    /// you kept: the broker signs whatever the database holds now.
    pub old_checkpoint: String,
    pub checkpoint: String,
}

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("no such row in this tenant's audit history")]
    NoSuchRow,
    #[error("{0}")]
    Proof(#[from] merkle::ProofError),
    #[error("the row was committed after the latest checkpoint; ask again")]
    NotYetCheckpointed,
    #[error("the stored history no longer matches the broker's checkpoint: run audit verify")]
    Changed,
}

/// Builds an inclusion proof of the row `audit_id` against the tenant's latest
/// checkpoint (brought up to date first, so it is the one `GET
/// /v1/audit/checkpoint` serves and the checkpoint file holds). The rows read
/// now must still hash to that checkpoint's root; if they do not, the history
/// changed under the broker and no proof is signed.
pub async fn prove_inclusion(
    store: &Store,
    cpr: &Checkpointer,
    tenant: &str,
    audit_id: &str,
) -> Result<InclusionProof, ProveError> {
    let t = load(store, tenant, Some(audit_id)).await?;
    let m = t.found.ok_or(ProveError::NoSuchRow)?;
    let note = cpr
        .refresh(store, tenant, 1)
        .await?
        .ok_or(ProveError::NoSuchRow)?;
    let cp = cpr
        .key
        .verifier()
        .open_checkpoint(&note)
        .map_err(|_| ProveError::Changed)?;
    let tree = t.tree();
    let n = cp.size;
    if m >= n {
        // Committed after the checkpoint was read: the next one covers it.
        return Err(ProveError::NotYetCheckpointed);
    }
    let root = tree.root(n)?;
    if root != cp.root {
        return Err(ProveError::Changed);
    }
    let hashes = tree.inclusion(m, n)?;
    let leaf = t.leaves[(m - t.pruned) as usize];
    let row_hash = store_row_hash(store, tenant, m as i64 + 1).await?;
    Ok(InclusionProof {
        leaf_index: m,
        tree_size: n,
        leaf_hash: merkle::to_hex(&leaf),
        hashes: hashes.iter().map(merkle::to_hex).collect(),
        root_hash: merkle::to_hex(&root),
        checkpoint: note,
        audit_id: Some(audit_id.to_owned()),
        row_hash,
    })
}

async fn store_row_hash(
    store: &Store,
    tenant: &str,
    seq: i64,
) -> Result<Option<String>, TreeError> {
    let mut h = None;
    store
        .scan_audit(tenant, seq - 1, |r| {
            if r.seq == seq {
                h = Some(r.hash);
            }
            false
        })
        .await?;
    Ok(h)
}

/// Builds a consistency proof between the first `from` and first `to` rows.
///
/// Both notes are signed only for a history that still matches the broker's
/// latest checkpoint (brought up to date first): every smaller tree is fixed
/// by that root, so nothing signed here can vouch for rows rewritten in the
/// database since. Sizes past that checkpoint are refused until the next one.
pub async fn prove_consistency(
    store: &Store,
    cpr: &Checkpointer,
    tenant: &str,
    from: u64,
    to: u64,
) -> Result<ConsistencyProof, ProveError> {
    let key = &cpr.key;
    let note = cpr.refresh(store, tenant, 1).await?;
    let t = load(store, tenant, None).await?;
    let tree = t.tree();
    let signed = match note {
        Some(n) => key
            .verifier()
            .open_checkpoint(&n)
            .map_err(|_| ProveError::Changed)?,
        None => Checkpoint {
            origin: origin(tenant),
            size: 0,
            root: merkle::empty_root(),
        },
    };
    if tree.size() < signed.size || tree.root(signed.size)? != signed.root {
        return Err(ProveError::Changed);
    }
    if to > signed.size && to <= tree.size() {
        return Err(ProveError::NotYetCheckpointed);
    }
    let hashes = tree.consistency(from, to)?;
    let (r1, r2) = (tree.root(from)?, tree.root(to)?);
    let sign = |size, root| {
        key.sign(&Checkpoint {
            origin: origin(tenant),
            size,
            root,
        })
    };
    Ok(ConsistencyProof {
        from_size: from,
        to_size: to,
        from_root: merkle::to_hex(&r1),
        to_root: merkle::to_hex(&r2),
        hashes: hashes.iter().map(merkle::to_hex).collect(),
        old_checkpoint: sign(from, r1),
        checkpoint: sign(to, r2),
    })
}

fn hashes_of(v: &[String]) -> Result<Vec<Hash>, String> {
    v.iter()
        .map(|h| merkle::from_hex(h).ok_or_else(|| "a hash is not 64 hex characters".to_owned()))
        .collect()
}

/// Checks a proof (inclusion or consistency, as JSON) offline with the
/// verifier key; returns what it proves, or why it is rejected.
pub fn verify_proof(json: &str, key: &VerifierKey) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("the proof is not JSON: {e}"))?;
    if v.get("leaf_index").is_some() {
        let p: InclusionProof =
            serde_json::from_value(v).map_err(|e| format!("not an inclusion proof: {e}"))?;
        let cp = key
            .open_checkpoint(&p.checkpoint)
            .map_err(|e| e.to_string())?;
        let root = merkle::from_hex(&p.root_hash).ok_or("root_hash is not 64 hex characters")?;
        let leaf = merkle::from_hex(&p.leaf_hash).ok_or("leaf_hash is not 64 hex characters")?;
        if cp.size != p.tree_size || cp.root != root {
            return Err("the signed checkpoint is not of this tree size and root".into());
        }
        if let Some(rh) = &p.row_hash
            && merkle::row_leaf(rh) != Some(leaf)
        {
            return Err("leaf_hash is not the leaf hash of row_hash".into());
        }
        let hashes = hashes_of(&p.hashes)?;
        if !merkle::verify_inclusion(p.leaf_index, p.tree_size, &leaf, &hashes, &root) {
            return Err("the audit path does not lead to the signed root".into());
        }
        // The proof covers the leaf, not the `audit_id` label beside it: only
        // the row itself, re-hashed to `row_hash`, shows which row that is.
        let named = match (&p.audit_id, &p.row_hash) {
            (Some(id), Some(rh)) => format!(
                " (the proof names audit id {id}; that row is this leaf if it re-hashes to {rh})"
            ),
            (Some(id), None) => {
                format!(" (the proof names audit id {id}, which it does not prove)")
            }
            _ => String::new(),
        };
        Ok(format!(
            "leaf {} of {}'s history of {} rows is {}, signed by {}{named}",
            p.leaf_index, cp.origin, cp.size, p.leaf_hash, key.name
        ))
    } else {
        let p: ConsistencyProof =
            serde_json::from_value(v).map_err(|e| format!("not a consistency proof: {e}"))?;
        let old = key
            .open_checkpoint(&p.old_checkpoint)
            .map_err(|e| e.to_string())?;
        let new = key
            .open_checkpoint(&p.checkpoint)
            .map_err(|e| e.to_string())?;
        if old.origin != new.origin {
            return Err("the two checkpoints are of different logs".into());
        }
        let r1 = merkle::from_hex(&p.from_root).ok_or("from_root is not 64 hex characters")?;
        let r2 = merkle::from_hex(&p.to_root).ok_or("to_root is not 64 hex characters")?;
        if (old.size, old.root, new.size, new.root) != (p.from_size, r1, p.to_size, r2) {
            return Err("the signed checkpoints are not of these sizes and roots".into());
        }
        let hashes = hashes_of(&p.hashes)?;
        if !merkle::verify_consistency(p.from_size, p.to_size, &r1, &r2, &hashes) {
            return Err("the consistency proof does not hold".into());
        }
        Ok(format!(
            "{}'s history of {} rows extends its history of {} rows, signed by {}",
            new.origin, p.to_size, p.from_size, key.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SigningKey {
        SigningKey::from_seed(name, &[7u8; 32]).unwrap()
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_round_trips_through_text() {
        let k = key("token-broker");
        let v = VerifierKey::parse(&k.verifier().to_string()).unwrap();
        assert_eq!(v, k.verifier());
        let cp = Checkpoint {
            origin: origin("acme"),
            size: 5,
            root: [3u8; 32],
        };
        let note = k.sign(&cp);
        assert!(note.starts_with("token-broker/acme\n5\nAwMD"));
        assert!(note.contains("\n\n\u{2014} token-broker "));
        assert_eq!(v.open_checkpoint(&note).unwrap(), cp);
    }

    #[test]
    fn forged_or_foreign_checkpoints_are_refused() {
        let k = key("token-broker");
        let v = k.verifier();
        let note = k.sign(&Checkpoint {
            origin: origin("acme"),
            size: 5,
            root: [3u8; 32],
        });
        let edited = note.replacen("\n5\n", "\n6\n", 1);
        assert_eq!(
            v.open_checkpoint(&edited),
            Err(NoteError::BadSignature("token-broker".into()))
        );
        // Same name, another key: its signature is not ours.
        let other = SigningKey::from_seed("token-broker", &[8u8; 32]).unwrap();
        let theirs = other.sign(&Checkpoint {
            origin: origin("acme"),
            size: 5,
            root: [3u8; 32],
        });
        assert!(matches!(
            v.open_checkpoint(&theirs),
            Err(NoteError::UnknownKey(_))
        ));
        assert!(v.open_checkpoint("token-broker/acme\n5\n").is_err());
    }

    #[test]
    fn the_key_hash_follows_the_signed_note_spec() {
        // The Go note package's example vector (golang.org/x/mod/sumdb/note).
        let v = VerifierKey::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        assert_eq!(v.name, "PeterNeumann");
        assert!(
            VerifierKey::parse(
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert!(v.open(note).is_ok());
    }

    #[test]
    fn keys_whose_base64_holds_a_plus_round_trip() {
        let k = (0u8..=255)
            .map(|b| SigningKey::from_seed("n", &[b; 32]).unwrap())
            .find(|k| k.verifier().to_string().matches('+').count() > 2)
            .unwrap();
        assert_eq!(
            VerifierKey::parse(&k.verifier().to_string()).unwrap(),
            k.verifier()
        );
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.key");
        let k = SigningKey::generate(&path, "broker.example").unwrap();
        let again = SigningKey::load(&path).unwrap();
        assert_eq!(k.verifier(), again.verifier());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            SigningKey::generate(&path, "x").is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn a_checkpoint_file_splits_into_notes() {
        let k = key("a");
        let n1 = k.sign(&Checkpoint {
            origin: origin("t1"),
            size: 1,
            root: [1u8; 32],
        });
        let n2 = k.sign(&Checkpoint {
            origin: origin("t2"),
            size: 2,
            root: [2u8; 32],
        });
        let notes = split_notes(&format!("{n1}{n2}"));
        assert_eq!(notes, vec![n1, n2]);
    }
}
