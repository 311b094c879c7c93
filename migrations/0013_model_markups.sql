-- Per-model retail terms of a tenant (issue 18): a markup for one public model that
-- overrides the tenant's and its users' markups on that model.
CREATE TABLE data.tenant_model_markup (
    tenant_id      uuid NOT NULL REFERENCES data.tenant (tenant_id) ON DELETE CASCADE,
    model          text NOT NULL,
    markup_percent numeric NOT NULL CHECK (markup_percent >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model)
);

CREATE TRIGGER tenant_model_markup_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON data.tenant_model_markup FOR EACH STATEMENT EXECUTE FUNCTION data.notify_config_table();
