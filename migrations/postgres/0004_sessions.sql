-- Sessions registered by a tenant's app: who owns them and their labels, which
-- the policy's "owner" and "label:k=glob" session matchers read.
CREATE TABLE sessions (
    tenant        TEXT NOT NULL REFERENCES tenants (tenant),
    session_id    TEXT NOT NULL,
    owner         TEXT,                      -- user id of the owner, if any
    labels        TEXT NOT NULL,             -- JSON object of string -> string
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, session_id)
);
