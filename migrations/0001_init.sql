-- Neuropia schema, first version. Append-only: never edit this file once it has landed;
-- add a new migration instead.
--
-- Names follow the product brief (../shared/SEED.md). Money is NUMERIC without a fixed
-- scale, so rates and charges are stored at full precision and rounded only for display.

CREATE SCHEMA IF NOT EXISTS auth;
CREATE SCHEMA IF NOT EXISTS data;

-- Tenants: the operator's customers' organisations. Markup is in percent (15 = 15 %).
CREATE TABLE data.tenant (
    tenant_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    markup_percent     numeric NOT NULL DEFAULT 0 CHECK (markup_percent >= 0),
    overdue_threshold  numeric NOT NULL DEFAULT 0 CHECK (overdue_threshold >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

INSERT INTO data.tenant (tenant_id, name)
VALUES ('00000000-0000-0000-0000-000000000001', 'default');

-- Platform login.
CREATE TABLE auth.login (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email            text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    hashed_password  text NOT NULL,
    role             text NOT NULL DEFAULT 'user'
                     CHECK (role IN ('platform_admin', 'tenant_admin', 'user')),
    tenant_id        uuid NOT NULL REFERENCES data.tenant (tenant_id),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX login_email_unique ON auth.login (lower(email));

-- Profile, status and balance. `balance` is moved only by the ledger writer (by deltas,
-- in the same transaction that inserts the ledger rows); `balance_version` increases with
-- every move so a balance actor can tell a fresh value from a stale one.
CREATE TABLE data.user_profile (
    user_id          uuid PRIMARY KEY REFERENCES auth.login (id) ON DELETE CASCADE,
    username         text NOT NULL CHECK (length(username) BETWEEN 1 AND 64),
    tenant_id        uuid NOT NULL REFERENCES data.tenant (tenant_id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'active', 'overdue')),
    balance          numeric NOT NULL DEFAULT 0,
    balance_version  bigint NOT NULL DEFAULT 0,
    markup_percent   numeric CHECK (markup_percent IS NULL OR markup_percent >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_profile_tenant ON data.user_profile (tenant_id);

-- Brief's "balance management" table, kept as a view over the one place balances live.
CREATE VIEW data.account_balance AS
SELECT user_id, tenant_id, balance, status, balance_version, updated_at
FROM data.user_profile;

-- Virtual keys. Only the SHA-256 (hex) of the plaintext is stored: `virtual_key_hash`
-- plays the role of the brief's `virtual_key` column. `key_last4` serves masked listings.
CREATE TABLE data.virtual_key (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    virtual_key_hash  text NOT NULL UNIQUE CHECK (virtual_key_hash ~ '^[0-9a-f]{64}$'),
    key_prefix        text NOT NULL,
    key_last4         text NOT NULL,
    user_id           uuid NOT NULL REFERENCES data.user_profile (user_id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    description       text,
    rate_limits       jsonb NOT NULL DEFAULT '{}'::jsonb,
    allowed_models    text[] NOT NULL DEFAULT '{}',
    key_type_id       integer,
    is_active         boolean NOT NULL DEFAULT true,
    status_reason     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    rotated_at        timestamptz
);
CREATE INDEX virtual_key_user ON data.virtual_key (user_id);

-- Wholesale price per token, per provider and model.
CREATE TABLE data.provider_rate (
    provider     text NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    model        text NOT NULL CHECK (length(model) BETWEEN 1 AND 128),
    input_rate   numeric NOT NULL CHECK (input_rate >= 0),
    output_rate  numeric NOT NULL CHECK (output_rate >= 0),
    currency     text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

-- Model -> provider mapping: the Portkey-format routing plan for each public model name.
CREATE TABLE data.model_configs (
    model       text PRIMARY KEY CHECK (length(model) BETWEEN 1 AND 128),
    provider    text NOT NULL,
    config      jsonb NOT NULL,
    is_active   boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-tenant or per-user Portkey configs (functions arrive with the ConfigActor work).
CREATE TABLE data.portkey_configs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid REFERENCES data.tenant (tenant_id) ON DELETE CASCADE,
    user_id         uuid REFERENCES data.user_profile (user_id) ON DELETE CASCADE,
    config_name     text NOT NULL,
    config_json     jsonb NOT NULL,
    is_active       boolean NOT NULL DEFAULT true,
    effective_from  timestamptz NOT NULL DEFAULT now(),
    notes           text,
    created_by      uuid,
    updated_by      uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every balance movement. `request_id` is unique, so writing a movement twice is
-- impossible; the ledger writer moves balances only by the rows it actually inserted.
-- `amount` is signed: credits are positive, charges negative.
CREATE TABLE data.balance_ledger (
    id            bigserial PRIMARY KEY,
    request_id    text NOT NULL UNIQUE,
    user_id       uuid NOT NULL REFERENCES data.user_profile (user_id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('topup', 'charge')),
    amount        numeric NOT NULL,
    status_after  text NOT NULL,
    note          text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX balance_ledger_user ON data.balance_ledger (user_id, id);

-- One row per billed call. `cost` is what the customer paid, `platform_cost` the wholesale.
CREATE TABLE data.usage_log (
    id              bigserial PRIMARY KEY,
    request_id      text NOT NULL UNIQUE,
    user_id         uuid NOT NULL REFERENCES data.user_profile (user_id) ON DELETE CASCADE,
    tenant_id       uuid NOT NULL,
    virtual_key_id  uuid,
    provider        text NOT NULL,
    model           text NOT NULL,
    input_tokens    integer NOT NULL CHECK (input_tokens >= 0),
    output_tokens   integer NOT NULL CHECK (output_tokens >= 0),
    tokens          integer NOT NULL CHECK (tokens >= 0),
    input_rate      numeric NOT NULL,
    output_rate     numeric NOT NULL,
    markup_percent  numeric NOT NULL,
    platform_cost   numeric NOT NULL,
    cost            numeric NOT NULL,
    usage_source    text NOT NULL DEFAULT 'upstream' CHECK (usage_source IN ('upstream', 'estimated')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_log_user_time ON data.usage_log (user_id, created_at);

-- ---------------------------------------------------------------------------------------
-- Virtual-key functions of the brief. They take the plaintext key, store and look up only
-- its SHA-256, and announce every change on channel `virtual_key_update`. The payload's
-- `virtual_key` field carries the hash, never the plaintext.

CREATE FUNCTION data.hash_virtual_key(p_virtual_key text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT encode(sha256(convert_to(p_virtual_key, 'UTF8')), 'hex')
$$;

CREATE FUNCTION data.new_virtual_key_plaintext(p_key_prefix text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_key_prefix IS NULL OR p_key_prefix !~ '^[a-z][a-z0-9]{0,15}$' THEN
        RAISE EXCEPTION 'invalid key prefix' USING ERRCODE = '22023';
    END IF;
    -- Two random UUIDs: 244 random bits.
    RETURN p_key_prefix || '_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
END
$$;

CREATE FUNCTION data.notify_virtual_key(k data.virtual_key, p_action text, p_extra jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('virtual_key_update', (jsonb_build_object(
        'action', p_action,
        'virtual_key', k.virtual_key_hash,
        'virtual_key_id', k.id,
        'user_id', k.user_id,
        'rate_limits', k.rate_limits,
        'allowed_models', to_jsonb(k.allowed_models),
        'key_type_id', k.key_type_id,
        'key_prefix', k.key_prefix,
        'is_active', k.is_active
    ) || coalesce(p_extra, '{}'::jsonb))::text);
END
$$;

CREATE FUNCTION data.rate_limits_json(p_rpm integer, p_tpm integer) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_rpm IS NOT NULL AND p_rpm <= 0 OR p_tpm IS NOT NULL AND p_tpm <= 0 THEN
        RAISE EXCEPTION 'rate limits must be positive' USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object('rpm', p_rpm, 'tpm', p_tpm));
END
$$;

CREATE FUNCTION data.create_virtual_key(
    p_user_id uuid,
    p_name text,
    p_description text DEFAULT NULL,
    p_rate_limit_rpm integer DEFAULT NULL,
    p_rate_limit_tpm integer DEFAULT NULL,
    p_allowed_models text[] DEFAULT '{}',
    p_key_type_id integer DEFAULT NULL,
    p_key_prefix text DEFAULT 'vk'
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_key text := data.new_virtual_key_plaintext(coalesce(p_key_prefix, 'vk'));
    k data.virtual_key;
BEGIN
    INSERT INTO data.virtual_key (virtual_key_hash, key_prefix, key_last4, user_id, name,
                                  description, rate_limits, allowed_models, key_type_id)
    VALUES (data.hash_virtual_key(v_key), coalesce(p_key_prefix, 'vk'), right(v_key, 4),
            p_user_id, p_name, p_description,
            data.rate_limits_json(p_rate_limit_rpm, p_rate_limit_tpm),
            coalesce(p_allowed_models, '{}'), p_key_type_id)
    RETURNING * INTO k;
    PERFORM data.notify_virtual_key(k, 'create', NULL);
    RETURN v_key;
END
$$;

-- NULL arguments leave the field unchanged.
CREATE FUNCTION data.update_virtual_key(
    p_virtual_key text,
    p_name text DEFAULT NULL,
    p_description text DEFAULT NULL,
    p_rate_limit_rpm integer DEFAULT NULL,
    p_rate_limit_tpm integer DEFAULT NULL,
    p_allowed_models text[] DEFAULT NULL,
    p_key_type_id integer DEFAULT NULL,
    p_key_prefix text DEFAULT NULL,
    p_is_active boolean DEFAULT NULL
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
BEGIN
    UPDATE data.virtual_key v SET
        name = coalesce(p_name, v.name),
        description = coalesce(p_description, v.description),
        rate_limits = CASE
            WHEN p_rate_limit_rpm IS NULL AND p_rate_limit_tpm IS NULL THEN v.rate_limits
            ELSE data.rate_limits_json(
                coalesce(p_rate_limit_rpm, (v.rate_limits ->> 'rpm')::integer),
                coalesce(p_rate_limit_tpm, (v.rate_limits ->> 'tpm')::integer))
        END,
        allowed_models = coalesce(p_allowed_models, v.allowed_models),
        key_type_id = coalesce(p_key_type_id, v.key_type_id),
        key_prefix = coalesce(p_key_prefix, v.key_prefix),
        is_active = coalesce(p_is_active, v.is_active),
        updated_at = now()
    WHERE v.virtual_key_hash = data.hash_virtual_key(p_virtual_key)
    RETURNING * INTO k;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    PERFORM data.notify_virtual_key(k, 'update', NULL);
END
$$;

CREATE FUNCTION data.deactivate_virtual_key(p_virtual_key text, p_reason text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
BEGIN
    UPDATE data.virtual_key v SET is_active = false, status_reason = p_reason, updated_at = now()
    WHERE v.virtual_key_hash = data.hash_virtual_key(p_virtual_key)
    RETURNING * INTO k;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    PERFORM data.notify_virtual_key(k, 'deactivate', jsonb_build_object('reason', p_reason));
END
$$;

CREATE FUNCTION data.activate_virtual_key(p_virtual_key text, p_reason text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
BEGIN
    UPDATE data.virtual_key v SET is_active = true, status_reason = p_reason, updated_at = now()
    WHERE v.virtual_key_hash = data.hash_virtual_key(p_virtual_key)
    RETURNING * INTO k;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    PERFORM data.notify_virtual_key(k, 'activate', jsonb_build_object('reason', p_reason));
END
$$;

-- The key keeps its id, limits and history; only the secret changes. The payload names the
-- old hash too, so every cache drops it at once.
CREATE FUNCTION data.rotate_virtual_key(p_old_virtual_key text, p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
    v_old_hash text := data.hash_virtual_key(p_old_virtual_key);
    v_key text;
BEGIN
    SELECT * INTO k FROM data.virtual_key WHERE virtual_key_hash = v_old_hash FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    v_key := data.new_virtual_key_plaintext(k.key_prefix);
    UPDATE data.virtual_key v SET
        virtual_key_hash = data.hash_virtual_key(v_key),
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
