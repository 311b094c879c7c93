-- Charges in the balance ledger once per user per flush (issue 19): a row summing that
-- user's calls committed together, `calls` of them, named `charges:<request id of the
-- newest>`. Each call keeps its own `usage_log` row (with its cost), whose unique
-- `request_id` is what makes a charge happen once; a row written before this migration
-- (one per call) has `calls` NULL. Top-ups and redemptions keep one row each.
ALTER TABLE data.balance_ledger ADD COLUMN calls integer CHECK (calls > 0);
