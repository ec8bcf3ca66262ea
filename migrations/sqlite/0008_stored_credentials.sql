-- Video credentials uploaded by tenant admins. The secret (OpenTok API secret or
-- Vonage private key) is stored only sealed with AES-256-GCM under a master key
-- that lives outside the database (key_id says which); the associated data binds
-- each ciphertext to (tenant, name, provider, owner_id).
CREATE TABLE stored_credentials (
    tenant        TEXT NOT NULL REFERENCES tenants (tenant),
    name          TEXT NOT NULL,
    provider      TEXT NOT NULL,             -- opentok | vonage
    owner_id      TEXT NOT NULL,             -- OpenTok api_key or Vonage application_id (public)
    token_format  TEXT,                      -- jwt | t1 (opentok only)
    fingerprint   TEXT NOT NULL,             -- sha256 prefix of the secret, to recognise it
    key_id        TEXT NOT NULL,             -- master key that sealed it
    nonce         TEXT NOT NULL,             -- base64
    ciphertext    TEXT NOT NULL,             -- base64, with the GCM tag
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    updated_by    TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- One video project, one tenant: which tenant claims each OpenTok api_key or
-- Vonage application_id, through its policy file or a stored credential.
CREATE TABLE video_projects (
    owner_id      TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    via           TEXT NOT NULL,             -- 'policy' or 'stored:<credential name>'
    claimed_at_ms BIGINT NOT NULL
);
CREATE INDEX video_projects_by_tenant ON video_projects (tenant, via);
