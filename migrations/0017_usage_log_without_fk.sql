-- The usage log's foreign key to `user_profile` goes (issue 19): its check ran once per
-- inserted row, about as much of PostgreSQL's time as the row itself. The ledger is the
-- only writer of `usage_log`, and every batch that writes a user's usage rows also writes
-- that user's summed `charge` row in `balance_ledger`, whose foreign key stays: a batch
-- naming a missing user fails whole, once per user instead of once per call. Usage rows
-- are billing records: deleting a user no longer deletes them with it.
ALTER TABLE data.usage_log DROP CONSTRAINT usage_log_user_id_fkey;
