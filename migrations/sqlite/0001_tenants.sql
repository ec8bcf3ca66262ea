-- A tenant is one customer app. Its slug is its stable, human-readable id and
-- appears in API keys' ownership, policy files and every audit row.
CREATE TABLE tenants (
    tenant        TEXT PRIMARY KEY,          -- slug: [a-z0-9][a-z0-9-]{0,62}
    created_at_ms BIGINT NOT NULL
);
