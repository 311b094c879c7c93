-- Prices that match providers' bills: cached input (read), cache writes and reasoning output
-- may have rates of their own (NULL: the plain input or output rate applies), and every
-- usage row records the split it was billed on and the rates used.
ALTER TABLE data.provider_rate
    ADD COLUMN cached_input_rate     numeric CHECK (cached_input_rate >= 0),
    ADD COLUMN cache_write_rate      numeric CHECK (cache_write_rate >= 0),
    ADD COLUMN reasoning_output_rate numeric CHECK (reasoning_output_rate >= 0);

ALTER TABLE data.usage_log
    ADD COLUMN cached_input_tokens   integer NOT NULL DEFAULT 0 CHECK (cached_input_tokens >= 0),
    ADD COLUMN cache_write_tokens    integer NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
    ADD COLUMN reasoning_tokens      integer NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    ADD COLUMN cached_input_rate     numeric,
    ADD COLUMN cache_write_rate      numeric,
    ADD COLUMN reasoning_output_rate numeric;
