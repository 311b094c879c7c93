-- Suspension (issue 17): a platform admin or the user's tenant admin may suspend a user.
-- A suspended login cannot sign in, its tokens are refused (suspending also increments
-- `token_version`, so they stay dead after a reinstatement), and every call with any of
-- its keys is refused while its keys keep their own state, to be served again once
-- reinstated. The gateways learn of it on `neuropia_config`, like a markup change.
ALTER TABLE auth.login ADD COLUMN suspended_at timestamptz;

CREATE FUNCTION data.notify_suspension() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('neuropia_config', jsonb_build_object('table', 'login',
        'op', 'suspension', 'user_id', NEW.id)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER login_suspension_notify AFTER UPDATE OF suspended_at ON auth.login
    FOR EACH ROW WHEN ((OLD.suspended_at IS NULL) IS DISTINCT FROM (NEW.suspended_at IS NULL))
    EXECUTE FUNCTION data.notify_suspension();
