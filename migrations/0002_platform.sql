-- Platform API: key lifecycle by id, redemption codes, the persisted JWT secret.

-- ---------------------------------------------------------------------------------------
-- Key lifecycle by id. The API addresses keys by id (it never holds the plaintext); these
-- do the work and send the same `virtual_key_update` payloads. The brief's plaintext
-- functions now find the id from the hash and delegate, so both paths behave alike.

CREATE FUNCTION data.virtual_key_id_of(p_virtual_key text) RETURNS uuid
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id uuid;
BEGIN
    SELECT id INTO v_id FROM data.virtual_key WHERE virtual_key_hash = data.hash_virtual_key(p_virtual_key);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    RETURN v_id;
END
$$;

CREATE FUNCTION data.update_virtual_key_by_id(
    p_id uuid,
    p_name text DEFAULT NULL,
    p_description text DEFAULT NULL,
    p_rate_limit_rpm integer DEFAULT NULL,
    p_rate_limit_tpm integer DEFAULT NULL,
    p_allowed_models text[] DEFAULT NULL,
    p_key_type_id integer DEFAULT NULL,
    p_key_prefix text DEFAULT NULL,
    p_is_active boolean DEFAULT NULL,
    p_clear_rpm boolean DEFAULT false,
    p_clear_tpm boolean DEFAULT false
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
    v_rpm integer;
    v_tpm integer;
BEGIN
    SELECT * INTO k FROM data.virtual_key WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    IF p_key_prefix IS NOT NULL AND p_key_prefix !~ '^[a-z][a-z0-9]{0,15}$' THEN
        RAISE EXCEPTION 'invalid key prefix' USING ERRCODE = '22023';
    END IF;
    v_rpm := CASE WHEN p_clear_rpm THEN NULL
                  ELSE coalesce(p_rate_limit_rpm, (k.rate_limits ->> 'rpm')::integer) END;
    v_tpm := CASE WHEN p_clear_tpm THEN NULL
                  ELSE coalesce(p_rate_limit_tpm, (k.rate_limits ->> 'tpm')::integer) END;
    UPDATE data.virtual_key v SET
        name = coalesce(p_name, v.name),
        description = coalesce(p_description, v.description),
        rate_limits = data.rate_limits_json(v_rpm, v_tpm),
        allowed_models = coalesce(p_allowed_models, v.allowed_models),
        key_type_id = coalesce(p_key_type_id, v.key_type_id),
        key_prefix = coalesce(p_key_prefix, v.key_prefix),
        is_active = coalesce(p_is_active, v.is_active),
        updated_at = now()
    WHERE v.id = p_id
    RETURNING * INTO k;
    PERFORM data.notify_virtual_key(k, 'update', NULL);
END
$$;

CREATE FUNCTION data.set_virtual_key_active_by_id(p_id uuid, p_active boolean, p_reason text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
BEGIN
    UPDATE data.virtual_key v SET is_active = p_active, status_reason = p_reason, updated_at = now()
    WHERE v.id = p_id
    RETURNING * INTO k;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'virtual key not found' USING ERRCODE = 'P0002';
    END IF;
    PERFORM data.notify_virtual_key(k, CASE WHEN p_active THEN 'activate' ELSE 'deactivate' END,
                                    jsonb_build_object('reason', p_reason));
END
$$;

CREATE FUNCTION data.deactivate_virtual_key_by_id(p_id uuid, p_reason text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    SELECT data.set_virtual_key_active_by_id(p_id, false, p_reason)
$$;

CREATE FUNCTION data.activate_virtual_key_by_id(p_id uuid, p_reason text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    SELECT data.set_virtual_key_active_by_id(p_id, true, p_reason)
$$;

CREATE FUNCTION data.rotate_virtual_key_by_id(p_id uuid, p_reason text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION data.update_virtual_key(
    p_virtual_key text,
    p_name text DEFAULT NULL,
    p_description text DEFAULT NULL,
    p_rate_limit_rpm integer DEFAULT NULL,
    p_rate_limit_tpm integer DEFAULT NULL,
    p_allowed_models text[] DEFAULT NULL,
    p_key_type_id integer DEFAULT NULL,
    p_key_prefix text DEFAULT NULL,
    p_is_active boolean DEFAULT NULL
) RETURNS void LANGUAGE sql AS $$
    SELECT data.update_virtual_key_by_id(data.virtual_key_id_of(p_virtual_key), p_name,
        p_description, p_rate_limit_rpm, p_rate_limit_tpm, p_allowed_models, p_key_type_id,
        p_key_prefix, p_is_active)
$$;

CREATE OR REPLACE FUNCTION data.deactivate_virtual_key(p_virtual_key text, p_reason text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    SELECT data.deactivate_virtual_key_by_id(data.virtual_key_id_of(p_virtual_key), p_reason)
$$;

CREATE OR REPLACE FUNCTION data.activate_virtual_key(p_virtual_key text, p_reason text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    SELECT data.activate_virtual_key_by_id(data.virtual_key_id_of(p_virtual_key), p_reason)
$$;

CREATE OR REPLACE FUNCTION data.rotate_virtual_key(p_old_virtual_key text, p_reason text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT data.rotate_virtual_key_by_id(data.virtual_key_id_of(p_old_virtual_key), p_reason)
$$;

-- ---------------------------------------------------------------------------------------
-- Redemption codes: a platform admin mints codes worth an amount until an expiry; a user
-- redeems one exactly once. Only the code's SHA-256 is stored. The credit's ledger row has
-- `request_id = 'redeem:<code id>'`, unique, which is what makes a redemption happen once
-- even when redeemed concurrently; `redeemed_by` records who got it.
CREATE TABLE data.redemption_code (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code_hash    text NOT NULL UNIQUE CHECK (code_hash ~ '^[0-9a-f]{64}$'),
    code_last4   text NOT NULL,
    amount       numeric NOT NULL CHECK (amount > 0),
    expires_at   timestamptz NOT NULL,
    note         text,
    created_by   uuid REFERENCES auth.login (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    redeemed_by  uuid REFERENCES data.user_profile (user_id) ON DELETE SET NULL,
    redeemed_at  timestamptz
);

ALTER TABLE data.balance_ledger DROP CONSTRAINT balance_ledger_kind_check;
ALTER TABLE data.balance_ledger ADD CONSTRAINT balance_ledger_kind_check
    CHECK (kind IN ('topup', 'charge', 'redemption'));

-- ---------------------------------------------------------------------------------------
-- A generated JWT secret, kept so tokens survive restarts when JWT_SECRET is not set.
CREATE TABLE auth.platform_secret (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
