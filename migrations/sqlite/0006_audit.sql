-- The audit record: one row per issuance, refusal and admin event. Append-only:
-- the code never updates a row. Each tenant's rows form a hash chain
-- (hash = SHA-256 over prev_hash and the row's canonical JSON; docs/audit.md),
-- so an edit, a deletion or a reordering is caught by "token-broker audit verify".
-- SQLite: the table is clustered on (tenant, seq) (WITHOUT ROWID), so a row's
-- insert touches one B-tree fewer per index saved; audit_id is unique by
-- construction (UUIDv7) and needs no index of its own.
CREATE TABLE audit_events (
    audit_id              TEXT NOT NULL,     -- UUIDv7
    tenant                TEXT NOT NULL,
    seq                   BIGINT NOT NULL,   -- position in the tenant's chain, from 1
    at_ms                 BIGINT NOT NULL,
    kind                  TEXT NOT NULL,     -- token_issued | token_refused | key_created | ...
    outcome               TEXT NOT NULL,     -- issued | refused | ok
    code                  TEXT,              -- refusal code, when refused
    actor                 TEXT NOT NULL,     -- api_key | end_user | cli
    key_id                TEXT,              -- calling API key
    idp                   TEXT,              -- identity provider that vouched (end users)
    user_id               TEXT,
    user_name             TEXT,
    user_groups           TEXT,              -- JSON array
    session_id            TEXT,
    credential            TEXT,              -- tenant credential name that signed
    requested_role        TEXT,
    requested_expire_time BIGINT,            -- unix seconds
    granted_role          TEXT,
    granted_expire_time   BIGINT,            -- unix seconds
    rule                  TEXT,              -- deciding rule id
    policy_version        BIGINT,
    token_id              TEXT,              -- jti, or the T1 nonce
    token_sha256          TEXT,              -- fingerprint of the token; never the token
    client_addr           TEXT,
    user_agent            TEXT,
    request_id            TEXT,
    detail                TEXT,              -- JSON for admin events (filters, key id, version)
    prev_hash             TEXT NOT NULL,     -- hash of the previous row of this tenant
    hash                  TEXT NOT NULL,
    PRIMARY KEY (tenant, seq)
) WITHOUT ROWID;
CREATE INDEX audit_by_time ON audit_events (tenant, at_ms);
CREATE INDEX audit_by_session ON audit_events (tenant, session_id, seq);
CREATE INDEX audit_by_user ON audit_events (tenant, user_id, seq);
-- A presented token is found by its id (jti or nonce) and then checked against
-- token_sha256, so the random fingerprints need no index of their own.
CREATE INDEX audit_by_token_id ON audit_events (tenant, token_id);
CREATE INDEX audit_by_role ON audit_events (tenant, granted_role, seq);

-- The head of each tenant's chain, advanced in the same transaction as the rows.
-- Writers advance it with a compare-and-set on seq, so two broker instances on one
-- PostgreSQL can never fork a chain.
CREATE TABLE audit_heads (
    tenant        TEXT PRIMARY KEY,
    seq           BIGINT NOT NULL,
    hash          TEXT NOT NULL
);
