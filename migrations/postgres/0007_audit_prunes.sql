-- Retention: each prune deletes a tenant's oldest rows up to a point and keeps
-- that point (seq and hash of the last deleted row) here, so the rest of the
-- chain still verifies from it. The prune is also an audit_pruned event in the
-- chain itself.
CREATE TABLE audit_prunes (
    tenant        TEXT NOT NULL,
    through_seq   BIGINT NOT NULL,           -- last deleted row's seq
    through_hash  TEXT NOT NULL,             -- last deleted row's hash
    rows_deleted  BIGINT NOT NULL,
    pruned_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant, through_seq)
);
