-- Wholesaler controls on a key (issue 18): an expiry time, spend budgets (lifetime and per
-- calendar month, UTC, in the account's currency) and a client address allow-list.
--
-- Budgets are enforced with holds, like balances with reservations: a call on a budgeted
-- key is admitted only when `spent + open holds + its worst case` fits each budget, under
-- the key row's lock (so every instance sees the same holds), and its hold is deleted in
-- the very ledger transaction that adds its charge to `spent_*`. A hold whose call never
-- settled (its instance died) lapses at `expires_at`.
ALTER TABLE data.virtual_key
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN budget_total numeric CHECK (budget_total IS NULL OR budget_total >= 0),
    ADD COLUMN budget_monthly numeric CHECK (budget_monthly IS NULL OR budget_monthly >= 0),
    ADD COLUMN spent_total numeric NOT NULL DEFAULT 0,
    ADD COLUMN spent_month numeric NOT NULL DEFAULT 0,
    ADD COLUMN spent_month_of date,
    ADD COLUMN allowed_ips text[] NOT NULL DEFAULT '{}';

-- Keys made before this start with what they have spent.
UPDATE data.virtual_key k SET spent_total = s.total
  FROM (SELECT virtual_key_id, sum(cost) AS total FROM data.usage_log
         WHERE virtual_key_id IS NOT NULL GROUP BY virtual_key_id) s
 WHERE k.id = s.virtual_key_id;
UPDATE data.virtual_key k SET spent_month = s.total,
       spent_month_of = date_trunc('month', now() AT TIME ZONE 'UTC')::date
  FROM (SELECT virtual_key_id, sum(cost) AS total FROM data.usage_log
         WHERE virtual_key_id IS NOT NULL
           AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         GROUP BY virtual_key_id) s
 WHERE k.id = s.virtual_key_id;

CREATE TABLE data.key_budget_hold (
    request_id text PRIMARY KEY,
    key_id     uuid NOT NULL REFERENCES data.virtual_key (id) ON DELETE CASCADE,
    amount     numeric NOT NULL CHECK (amount >= 0),
    expires_at timestamptz NOT NULL
);
CREATE INDEX key_budget_hold_key ON data.key_budget_hold (key_id);

-- The hold itself, `data.hold_key_budget`, is in 0015 (it also announces refusals).

-- The key notification carries the new controls, so every instance's key actor has them.
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
        'updated_at', k.updated_at,
        'expires_at', k.expires_at,
        'budgeted', k.budget_total IS NOT NULL OR k.budget_monthly IS NOT NULL,
        'allowed_ips', to_jsonb(k.allowed_ips)
    ) || coalesce(p_extra, '{}'::jsonb))::text);
END
$$;
