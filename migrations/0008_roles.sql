-- Roles (issue 13, point 3).
--
-- Platform admins live in a tenant of their own, never in a customer tenant (before this,
-- the bootstrap admin sat in the default tenant, the one self-registered users join, where
-- that tenant's admins could see and act on it).
UPDATE data.tenant SET name = left(name, 80) || ' (' || tenant_id || ')'
 WHERE name = 'platform' AND tenant_id <> '00000000-0000-0000-0000-000000000002';
INSERT INTO data.tenant (tenant_id, name)
VALUES ('00000000-0000-0000-0000-000000000002', 'platform')
ON CONFLICT (tenant_id) DO NOTHING;
UPDATE data.user_profile p SET tenant_id = '00000000-0000-0000-0000-000000000002'
  FROM auth.login l WHERE l.id = p.user_id AND l.role = 'platform_admin';
UPDATE auth.login SET tenant_id = '00000000-0000-0000-0000-000000000002'
 WHERE role = 'platform_admin';
ALTER TABLE auth.login ADD CONSTRAINT login_platform_tenant
    CHECK ((role = 'platform_admin') = (tenant_id = '00000000-0000-0000-0000-000000000002'));

-- A token carries its login's version; a change of role (or anything else that must end
-- the login's sessions) increments it, and older tokens are refused at once.
ALTER TABLE auth.login ADD COLUMN token_version integer NOT NULL DEFAULT 0;

-- Who last set a key's limits (rpm, tpm, allow-list) and its active flag: a lower role may
-- only tighten those limits, and may not reactivate a key a higher role deactivated.
-- Keys made before this are treated as set by a tenant admin (their owners may tighten).
ALTER TABLE data.virtual_key
    ADD COLUMN limits_set_by text NOT NULL DEFAULT 'tenant_admin'
        CHECK (limits_set_by IN ('platform_admin', 'tenant_admin', 'user')),
    ADD COLUMN status_set_by text NOT NULL DEFAULT 'user'
        CHECK (status_set_by IN ('platform_admin', 'tenant_admin', 'user'));
