-- The audit log (issue 18): every change made through the platform API, append-only.
CREATE TABLE data.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    uuid NOT NULL,
    actor_role  text NOT NULL,
    -- The tenant the change concerns (its admin sees the entry); NULL for platform-wide
    -- changes such as rates and model plans.
    tenant_id   uuid,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    request_id  text NOT NULL,
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_log_tenant ON data.audit_log (tenant_id, id);
CREATE INDEX audit_log_target ON data.audit_log (target_type, target_id, id);
CREATE INDEX audit_log_actor ON data.audit_log (actor_id, id);

CREATE FUNCTION data.refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON data.audit_log
    FOR EACH ROW EXECUTE FUNCTION data.refuse_audit_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON data.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION data.refuse_audit_change();
