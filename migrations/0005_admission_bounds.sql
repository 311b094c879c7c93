-- What one call may cost, bounded before it reaches the upstream.
--
-- max_output_tokens: the most output tokens a call of the model may ask for (max_tokens
-- above it is refused with 400); image_tokens: the worst-case prompt tokens reserved per
-- image or other non-text part of a message.
ALTER TABLE data.model_configs
    ADD COLUMN max_output_tokens integer
        CHECK (max_output_tokens IS NULL OR max_output_tokens BETWEEN 1 AND 10000000),
    ADD COLUMN image_tokens integer
        CHECK (image_tokens IS NULL OR image_tokens BETWEEN 0 AND 1000000);

-- How far below zero a reservation may take a user of the tenant: a call is admitted only
-- when its worst case fits balance - open reservations + overdraft_limit. Zero by default.
ALTER TABLE data.tenant
    ADD COLUMN overdraft_limit numeric NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0);
