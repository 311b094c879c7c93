-- Hot reload: richer key notifications, the brief's Portkey config functions, and
-- notifications for rates, model plans, tenant settings and user markups.

-- ---------------------------------------------------------------------------------------
-- Keys: the payload now carries everything a gateway needs to apply a change without a
-- query (tenant, name, version), and rotation remembers the previous hash so caches can
-- drop it even when the notification itself was lost.

ALTER TABLE data.virtual_key ADD COLUMN previous_hash text;
CREATE INDEX virtual_key_updated ON data.virtual_key (updated_at);

CREATE OR REPLACE FUNCTION data.notify_virtual_key(k data.virtual_key, p_action text, p_extra jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('virtual_key_update', (jsonb_build_object(
        'action', p_action,
        'virtual_key', k.virtual_key_hash,
        'virtual_key_id', k.id,
        'user_id', k.user_id,
        'tenant_id', (SELECT tenant_id FROM data.user_profile WHERE user_id = k.user_id),
        'name', left(k.name, 128),
        'rate_limits', k.rate_limits,
        'allowed_models', to_jsonb(k.allowed_models),
        'key_type_id', k.key_type_id,
        'key_prefix', k.key_prefix,
        'is_active', k.is_active,
        'updated_at', k.updated_at
    ) || coalesce(p_extra, '{}'::jsonb))::text);
END
$$;

CREATE OR REPLACE FUNCTION data.rotate_virtual_key_by_id(p_id uuid, p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
    v_old_hash text;
    v_key text;
BEGIN
    SELECT * INTO k FROM data.virtual_key WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    v_old_hash := k.virtual_key_hash;
    v_key := data.new_virtual_key_plaintext(k.key_prefix);
    UPDATE data.virtual_key v SET
        virtual_key_hash = data.hash_virtual_key(v_key),
        previous_hash = v_old_hash,
        key_last4 = right(v_key, 4),
        status_reason = p_reason,
        rotated_at = now(),
        updated_at = now()
    WHERE v.id = k.id
    RETURNING * INTO k;
    PERFORM data.notify_virtual_key(k, 'rotate',
        jsonb_build_object('old_virtual_key', v_old_hash, 'reason', p_reason));
    RETURN v_key;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Portkey configs (brief). A config belongs to a tenant (user_id NULL) or to a user; the
-- active one for a (tenant, user) is the user's newest effective config, else the
-- tenant's. Every change is announced on `config_update` with `config_id` and
-- `config_json`; a payload over PostgreSQL's 8000-byte limit is sent without
-- `config_json` (and `"truncated": true`), and listeners read the config instead.

ALTER TABLE data.portkey_configs
    ADD COLUMN status_reason text,
    ADD CONSTRAINT portkey_configs_scope CHECK (tenant_id IS NOT NULL OR user_id IS NOT NULL);
CREATE INDEX portkey_configs_scope_idx ON data.portkey_configs (tenant_id, user_id) WHERE is_active;

CREATE FUNCTION data.notify_portkey_config(c data.portkey_configs, p_action text)
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
        'config_json', c.config_json);
BEGIN
    IF octet_length(v_payload::text) > 7900 THEN
        v_payload := (v_payload - 'config_json') || '{"truncated": true}'::jsonb;
    END IF;
    PERFORM pg_notify('config_update', v_payload::text);
END
$$;

CREATE FUNCTION data.create_portkey_config(
    p_tenant_id uuid,
    p_user_id uuid,
    p_config_name text,
    p_config_json jsonb,
    p_effective_from timestamptz DEFAULT NULL,
    p_notes text DEFAULT NULL,
    p_created_by uuid DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    c data.portkey_configs;
    v_tenant uuid := p_tenant_id;
BEGIN
    IF p_user_id IS NOT NULL THEN
        SELECT tenant_id INTO v_tenant FROM data.user_profile WHERE user_id = p_user_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'user not found' USING ERRCODE = 'P0002';
        END IF;
        IF p_tenant_id IS NOT NULL AND p_tenant_id <> v_tenant THEN
            RAISE EXCEPTION 'the user is not in this tenant' USING ERRCODE = '22023';
        END IF;
    ELSIF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'a config needs a tenant or a user' USING ERRCODE = '22023';
    END IF;
    IF p_config_json IS NULL OR jsonb_typeof(p_config_json) <> 'object' THEN
        RAISE EXCEPTION 'config_json must be an object' USING ERRCODE = '22023';
    END IF;
    INSERT INTO data.portkey_configs (tenant_id, user_id, config_name, config_json,
                                      effective_from, notes, created_by)
    VALUES (v_tenant, p_user_id, p_config_name, p_config_json,
            coalesce(p_effective_from, now()), p_notes, p_created_by)
    RETURNING * INTO c;
    PERFORM data.notify_portkey_config(c, 'create');
    RETURN c.id;
END
$$;

CREATE FUNCTION data.update_portkey_config(
    p_id uuid,
    p_config_json jsonb,
    p_effective_from timestamptz DEFAULT NULL,
    p_notes text DEFAULT NULL,
    p_updated_by uuid DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    c data.portkey_configs;
BEGIN
    IF p_config_json IS NOT NULL AND jsonb_typeof(p_config_json) <> 'object' THEN
        RAISE EXCEPTION 'config_json must be an object' USING ERRCODE = '22023';
    END IF;
    UPDATE data.portkey_configs SET
        config_json = coalesce(p_config_json, config_json),
        effective_from = coalesce(p_effective_from, effective_from),
        notes = coalesce(p_notes, notes),
        updated_by = p_updated_by,
        updated_at = now()
    WHERE id = p_id
    RETURNING * INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'portkey config not found' USING ERRCODE = 'P0002';
    END IF;
    PERFORM data.notify_portkey_config(c, 'update');
    RETURN c.id;
END
$$;

CREATE FUNCTION data.set_portkey_config_active(p_id uuid, p_active boolean, p_reason text, p_by uuid)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c data.portkey_configs;
BEGIN
    UPDATE data.portkey_configs SET is_active = p_active, status_reason = p_reason,
        updated_by = p_by, updated_at = now()
    WHERE id = p_id
    RETURNING * INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'portkey config not found' USING ERRCODE = 'P0002';
    END IF;
    PERFORM data.notify_portkey_config(c, CASE WHEN p_active THEN 'activate' ELSE 'deactivate' END);
END
$$;

CREATE FUNCTION data.deactivate_portkey_config(p_id uuid, p_reason text DEFAULT NULL,
                                               p_deactivated_by uuid DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    SELECT data.set_portkey_config_active(p_id, false, p_reason, p_deactivated_by)
$$;

CREATE FUNCTION data.activate_portkey_config(p_id uuid, p_reason text DEFAULT NULL,
                                             p_activated_by uuid DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    SELECT data.set_portkey_config_active(p_id, true, p_reason, p_activated_by)
$$;

-- The config that applies to (tenant, user) now: the user's newest effective active config,
-- else the tenant's; NULL when neither has one. Carries its id and scope.
CREATE FUNCTION data.get_active_portkey_config(p_tenant_id uuid, p_user_id uuid)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'config_id', c.id,
        'config_name', c.config_name,
        'scope', CASE WHEN c.user_id IS NOT NULL THEN 'user' ELSE 'tenant' END,
        'config_json', c.config_json)
    FROM data.portkey_configs c
    WHERE c.is_active AND c.effective_from <= now()
      AND ((p_user_id IS NOT NULL AND c.user_id = p_user_id)
           OR (c.user_id IS NULL AND c.tenant_id = p_tenant_id))
    ORDER BY (c.user_id IS NOT NULL) DESC, c.effective_from DESC, c.created_at DESC
    LIMIT 1
$$;

-- ---------------------------------------------------------------------------------------
-- Our channel for everything else the routing snapshot is made of. Statement-level: one
-- notification per statement, whatever it changed; listeners reload the snapshot.

CREATE FUNCTION data.notify_config_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('neuropia_config', jsonb_build_object('table', TG_TABLE_NAME,
                                                            'op', lower(TG_OP))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER provider_rate_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON data.provider_rate FOR EACH STATEMENT EXECUTE FUNCTION data.notify_config_table();
CREATE TRIGGER model_configs_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON data.model_configs FOR EACH STATEMENT EXECUTE FUNCTION data.notify_config_table();
CREATE TRIGGER tenant_notify AFTER INSERT OR UPDATE OR DELETE
    ON data.tenant FOR EACH STATEMENT EXECUTE FUNCTION data.notify_config_table();

CREATE FUNCTION data.notify_user_markup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('neuropia_config', jsonb_build_object('table', 'user_profile',
        'op', 'markup', 'user_id', NEW.user_id)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER user_markup_notify AFTER UPDATE OF markup_percent ON data.user_profile
    FOR EACH ROW WHEN (OLD.markup_percent IS DISTINCT FROM NEW.markup_percent)
    EXECUTE FUNCTION data.notify_user_markup();
