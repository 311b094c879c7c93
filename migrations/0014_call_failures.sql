-- Failed calls (issue 18): a paid call refused or failed after its key was known, kept so
-- customers can debug (never charged). Written in batches, best effort.
CREATE TABLE data.call_failure (
    id             bigserial PRIMARY KEY,
    request_id     text NOT NULL,
    user_id        uuid NOT NULL,
    tenant_id      uuid NOT NULL,
    virtual_key_id uuid NOT NULL,
    model          text NOT NULL,
    status         integer NOT NULL,
    error_code     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_failure_user ON data.call_failure (user_id, created_at);
CREATE INDEX call_failure_tenant ON data.call_failure (tenant_id, created_at);
