-- Change feed for in-memory caches. Every broker instance polls it (about four
-- times a second) and drops what changed: a revoked key, a new policy version, a
-- re-registered session. Rows are tiny and may be pruned after a minute.
CREATE TABLE changes (
    change_id     BIGSERIAL PRIMARY KEY,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,             -- key_revoked | policy_applied | session_updated
    subject       TEXT NOT NULL,             -- key id, version, or session id
    at_ms         BIGINT NOT NULL
);
