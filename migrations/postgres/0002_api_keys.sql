-- API keys of tenant apps. The secret is stored only as an argon2id PHC hash;
-- the key id (public) is the lookup key, so authentication never scans.
CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,          -- public part of tkb_<key_id>_<secret>
    tenant        TEXT NOT NULL REFERENCES tenants (tenant),
    name          TEXT,                      -- free label chosen by the admin
    scopes        TEXT NOT NULL,             -- space-separated: issue audit admin
    secret_hash   TEXT NOT NULL,             -- argon2id PHC string; never the secret
    created_at_ms BIGINT NOT NULL,
    created_by    TEXT NOT NULL,             -- "cli" or the admin key id that created it
    revoked_at_ms BIGINT                     -- set once; a revoked key never authenticates
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant);
