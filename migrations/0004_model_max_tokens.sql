-- A per-model ceiling for answers: reserved for calls that set no max_tokens, and sent to
-- the upstream as their max_tokens, so the reservation bounds what the call can cost.
ALTER TABLE data.model_configs
    ADD COLUMN default_max_tokens integer CHECK (default_max_tokens IS NULL OR default_max_tokens > 0);
