-- Alerts (issue 18): webhooks per tenant (and optionally per user) told of a balance going
-- below a threshold, an account's status changing, and a key's budget reaching 80 % and
-- 100 %. Each crossing makes one outbox row per webhook, in the transaction that made the
-- crossing (the ledger's commit, or the budget hold that refused a call), so a crossing is
-- announced once, whichever instance saw it and whatever restarts after. Deliveries are
-- signed (HMAC-SHA256), retried with back-off, and their state kept here.
CREATE TABLE data.alert_webhook (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid NOT NULL REFERENCES data.tenant (tenant_id) ON DELETE CASCADE,
    -- Set: this user's events only; NULL: every user of the tenant.
    user_id               uuid REFERENCES data.user_profile (user_id) ON DELETE CASCADE,
    url                   text NOT NULL,
    secret                text NOT NULL,
    low_balance_threshold numeric CHECK (low_balance_threshold IS NULL OR low_balance_threshold >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (tenant_id, user_id)
);

CREATE TABLE data.alert_outbox (
    id              bigserial PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES data.alert_webhook (id) ON DELETE CASCADE,
    tenant_id       uuid NOT NULL,
    event_id        uuid NOT NULL DEFAULT gen_random_uuid(),
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_status     integer,
    last_error      text
);
CREATE INDEX alert_outbox_due ON data.alert_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX alert_outbox_tenant ON data.alert_outbox (tenant_id, id);

-- Whether a key's budget refusal was already announced (reset when its budgets change).
ALTER TABLE data.virtual_key ADD COLUMN budget_alerted boolean NOT NULL DEFAULT false;

-- Queues `p_event` for every webhook watching `p_user` (its tenant's, and its own).
CREATE FUNCTION data.queue_alert(p_user uuid, p_event text, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO data.alert_outbox (webhook_id, tenant_id, event, payload)
    SELECT w.id, w.tenant_id, p_event,
           p_payload || jsonb_build_object('user_id', p_user, 'tenant_id', w.tenant_id)
    FROM data.alert_webhook w JOIN data.user_profile p ON p.tenant_id = w.tenant_id
    WHERE p.user_id = p_user AND (w.user_id IS NULL OR w.user_id = p_user)
$$;

-- Holds `p_amount` of key `p_key`'s budgets for the call `p_request` if it fits what the
-- key spent plus its open holds; returns NULL when held, else which budget refused
-- ('total' or 'monthly'), or 'missing'. The key's first refusal since its budgets were set
-- is announced.
CREATE FUNCTION data.hold_key_budget(p_key uuid, p_request text, p_amount numeric,
                                                p_ttl_secs integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    k data.virtual_key;
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_held numeric;
    v_refused text;
BEGIN
    -- NO KEY: the ledger's usage rows hold KEY SHARE locks on the key (their foreign key).
    SELECT * INTO k FROM data.virtual_key WHERE id = p_key FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'missing';
    END IF;
    DELETE FROM data.key_budget_hold WHERE key_id = p_key AND expires_at <= now();
    SELECT coalesce(sum(amount), 0) INTO v_held
      FROM data.key_budget_hold WHERE key_id = p_key AND request_id <> p_request;
    IF k.budget_total IS NOT NULL AND k.spent_total + v_held + p_amount > k.budget_total THEN
        v_refused := 'total';
    ELSIF k.budget_monthly IS NOT NULL
       AND (CASE WHEN k.spent_month_of = v_month THEN k.spent_month ELSE 0 END)
           + v_held + p_amount > k.budget_monthly THEN
        v_refused := 'monthly';
    END IF;
    IF v_refused IS NOT NULL THEN
        IF NOT k.budget_alerted THEN
            UPDATE data.virtual_key SET budget_alerted = true WHERE id = p_key;
            PERFORM data.queue_alert(k.user_id, 'key.budget_100', jsonb_build_object(
                'virtual_key_id', k.id, 'key_name', k.name, 'budget', v_refused,
                'budget_total', k.budget_total, 'budget_monthly', k.budget_monthly,
                'spent_total', k.spent_total));
        END IF;
        RETURN v_refused;
    END IF;
    INSERT INTO data.key_budget_hold (request_id, key_id, amount, expires_at)
    VALUES (p_request, p_key, p_amount, now() + make_interval(secs => p_ttl_secs))
    ON CONFLICT (request_id) DO UPDATE SET amount = EXCLUDED.amount,
                                           expires_at = EXCLUDED.expires_at;
    RETURN NULL;
END
$$;
