-- Every applied policy is a new numbered version per tenant; the newest is in force.
-- The TOML source is kept verbatim (it holds secret references, never secrets) so
-- any decision's "rule id + policy version" can be traced back to reviewed text.
CREATE TABLE policy_versions (
    tenant        TEXT NOT NULL REFERENCES tenants (tenant),
    version       BIGINT NOT NULL,           -- 1, 2, 3 ... per tenant
    source        TEXT NOT NULL,             -- the policy file as applied
    source_name   TEXT NOT NULL,             -- file name it came from
    sha256        TEXT NOT NULL,             -- hex digest of source
    applied_by    TEXT NOT NULL,             -- "cli:<os user>" or "key:<key id>"
    applied_at_ms BIGINT NOT NULL,
    note          TEXT,                      -- e.g. "rollback to 3"
    PRIMARY KEY (tenant, version)
);
