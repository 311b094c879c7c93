-- `config_update` notices reach every listener of the database: they carry a config's
-- plan with every `api_key` (at any depth) replaced by "***". Listeners that need the
-- keys read the config itself.
CREATE FUNCTION data.redact_api_keys(j jsonb) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE jsonb_typeof(j)
        WHEN 'object' THEN coalesce(
            (SELECT jsonb_object_agg(k, CASE WHEN k = 'api_key' THEN '"***"'::jsonb
                                             ELSE data.redact_api_keys(v) END)
             FROM jsonb_each(j) AS e(k, v)),
            '{}'::jsonb)
        WHEN 'array' THEN coalesce(
            (SELECT jsonb_agg(data.redact_api_keys(v) ORDER BY i)
             FROM jsonb_array_elements(j) WITH ORDINALITY AS a(v, i)),
            '[]'::jsonb)
        ELSE j
    END;
END
$$;

CREATE OR REPLACE FUNCTION data.notify_portkey_config(c data.portkey_configs, p_action text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_payload jsonb := jsonb_build_object(
        'action', p_action,
        'config_id', c.id,
        'tenant_id', c.tenant_id,
        'user_id', c.user_id,
        'config_name', c.config_name,
        'is_active', c.is_active,
        'effective_from', c.effective_from,
        'config_json', data.redact_api_keys(c.config_json));
BEGIN
    IF octet_length(v_payload::text) > 7900 THEN
        v_payload := (v_payload - 'config_json') || '{"truncated": true}'::jsonb;
    END IF;
    PERFORM pg_notify('config_update', v_payload::text);
END
$$;
