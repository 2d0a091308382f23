-- Accounts change only through audited functions. The application role keeps SELECT on
-- users, case_assignments and api_tokens but loses INSERT/UPDATE/DELETE (bodycam.db
-- _grant_app_role); it calls the SECURITY DEFINER functions below, owned by the migration
-- owner, each of which first checks that an audit row of the expected action was appended in
-- the same transaction (the sealed row is written by Python: the database never holds the
-- audit key). Every change of these tables, by whoever (the functions, a superuser), is
-- journalled by triggers in account_changes, append-only; a row whose change was not made
-- through an audited function has audit_id NULL, and `bodycam audit verify` reports it.

CREATE TABLE account_changes (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    details jsonb NOT NULL,
    audit_id bigint
);
CREATE INDEX account_changes_unaudited ON account_changes (id) WHERE audit_id IS NULL;

CREATE TRIGGER account_changes_append_only BEFORE UPDATE OR DELETE ON account_changes
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER account_changes_no_truncate BEFORE TRUNCATE ON account_changes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

-- Whether audit row v was appended by this transaction: audit.append holds the audit log's
-- advisory transaction lock (727002) until commit, so while this backend holds it no other
-- transaction can append, and the log's head is this transaction's latest row.
CREATE FUNCTION bodycam_audit_row_is_current(v bigint, actions text[]) RETURNS boolean
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT v IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                   AND pid = pg_backend_pid() AND granted AND classid = 0
                   AND objid = 727002 AND objsubid = 1)
       AND EXISTS (SELECT 1 FROM audit_head WHERE last_id = v)
       AND EXISTS (SELECT 1 FROM audit_log WHERE id = v
                   AND (actions IS NULL OR action = ANY (actions)))
$$;

-- The audit row the current audited function call is backed by: set (transaction-locally)
-- by the functions, and honoured only for a row appended in this very transaction.
CREATE FUNCTION bodycam_current_audit_id() RETURNS bigint LANGUAGE plpgsql STABLE
SET search_path = public, pg_temp AS $$
DECLARE
    v bigint := NULLIF(current_setting('bodycam.audit_id', true), '')::bigint;
BEGIN
    IF bodycam_audit_row_is_current(v, NULL) THEN
        RETURN v;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION account_changes_journal() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    audit_row bigint := bodycam_current_audit_id();
    actor text;
    rec jsonb := to_jsonb(COALESCE(NEW, OLD));
    details jsonb;
BEGIN
    -- Never a token hash in the journal: ids, names, roles, cases and times only.
    details := jsonb_strip_nulls(jsonb_build_object(
        'user', COALESCE(rec ->> 'name', rec ->> 'user_name'),
        'roles', rec -> 'roles', 'disabled', (rec ->> 'disabled_at') IS NOT NULL,
        'case', rec ->> 'case_id', 'token_id', CASE WHEN TG_TABLE_NAME = 'api_tokens'
                                                    THEN rec ->> 'id' END,
        'kind', rec ->> 'kind', 'revoked', CASE WHEN TG_TABLE_NAME = 'api_tokens'
                                                THEN (rec ->> 'revoked_at') IS NOT NULL END));
    IF TG_TABLE_NAME <> 'users' THEN
        details := details - 'disabled';
    END IF;
    IF audit_row IS NOT NULL THEN
        SELECT a.actor INTO actor FROM audit_log a WHERE a.id = audit_row;
    ELSE
        actor := 'db:' || session_user;
    END IF;
    INSERT INTO account_changes (actor, action, details, audit_id)
        VALUES (actor, TG_TABLE_NAME || '.' || lower(TG_OP), details, audit_row);
    RETURN NULL;
END $$;

CREATE TRIGGER users_journal AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION account_changes_journal();
CREATE TRIGGER case_assignments_journal AFTER INSERT OR UPDATE OR DELETE ON case_assignments
    FOR EACH ROW EXECUTE FUNCTION account_changes_journal();
CREATE TRIGGER api_tokens_journal AFTER INSERT OR UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION account_changes_journal();
CREATE TRIGGER users_no_truncate BEFORE TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER case_assignments_no_truncate BEFORE TRUNCATE ON case_assignments
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER api_tokens_no_truncate BEFORE TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

-- Refuse unless audit row p_audit_id was appended in this transaction with one of `actions`;
-- then mark the transaction as backed by it (the journal trigger reads the mark).
CREATE FUNCTION bodycam_audited(p_audit_id bigint, actions text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT COALESCE(bodycam_audit_row_is_current(p_audit_id, actions), false) THEN
        RAISE EXCEPTION 'account change refused: no % audit row % in this transaction',
            array_to_string(actions, '/'), p_audit_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('bodycam.audit_id', p_audit_id::text, true);
END $$;

CREATE FUNCTION bodycam_user_create(p_audit_id bigint, p_name text, p_roles text[], p_by text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['user.create']);
    INSERT INTO users (name, roles, created_by) VALUES (p_name, p_roles, p_by);
    PERFORM set_config('bodycam.audit_id', '', true);
END $$;

CREATE FUNCTION bodycam_user_set_roles(p_audit_id bigint, p_name text, p_roles text[])
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    found boolean;
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['user.roles']);
    UPDATE users SET roles = p_roles WHERE name = p_name;
    found := FOUND;
    PERFORM set_config('bodycam.audit_id', '', true);
    RETURN found;
END $$;

-- Disables the account and revokes its live tokens; returns how many were revoked, or -1
-- when there is no active account of that name.
CREATE FUNCTION bodycam_user_disable(p_audit_id bigint, p_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    revoked integer;
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['user.disable']);
    UPDATE users SET disabled_at = now() WHERE name = p_name AND disabled_at IS NULL;
    IF NOT FOUND THEN
        PERFORM set_config('bodycam.audit_id', '', true);
        RETURN -1;
    END IF;
    UPDATE api_tokens SET revoked_at = now() WHERE user_name = p_name AND revoked_at IS NULL;
    GET DIAGNOSTICS revoked = ROW_COUNT;
    PERFORM set_config('bodycam.audit_id', '', true);
    RETURN revoked;
END $$;

CREATE FUNCTION bodycam_case_assign(p_audit_id bigint, p_name text, p_case text, p_by text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['case.assign']);
    INSERT INTO case_assignments (user_name, case_id, assigned_by) VALUES (p_name, p_case, p_by)
        ON CONFLICT DO NOTHING;
    PERFORM set_config('bodycam.audit_id', '', true);
END $$;

CREATE FUNCTION bodycam_case_unassign(p_audit_id bigint, p_name text, p_case text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    found boolean;
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['case.unassign']);
    DELETE FROM case_assignments WHERE user_name = p_name AND case_id = p_case;
    found := FOUND;
    PERFORM set_config('bodycam.audit_id', '', true);
    RETURN found;
END $$;

-- A token is issued with an account (user.create) or at login; its hash only is stored.
CREATE FUNCTION bodycam_token_issue(p_audit_id bigint, p_id uuid, p_user text, p_sha256 text,
                                    p_kind text, p_expires_at timestamptz, p_by text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['user.create', 'login', 'token.issue']);
    INSERT INTO api_tokens (id, user_name, sha256, kind, expires_at, created_by)
        VALUES (p_id, p_user, p_sha256, p_kind, p_expires_at, p_by);
    PERFORM set_config('bodycam.audit_id', '', true);
END $$;

CREATE FUNCTION bodycam_token_revoke(p_audit_id bigint, p_id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    found boolean;
BEGIN
    PERFORM bodycam_audited(p_audit_id, ARRAY['logout', 'token.revoke']);
    UPDATE api_tokens SET revoked_at = now() WHERE id = p_id AND revoked_at IS NULL;
    found := FOUND;
    PERFORM set_config('bodycam.audit_id', '', true);
    RETURN found;
END $$;

-- Only the application role may call them (granted by bodycam.db._grant_app_role).
REVOKE ALL ON FUNCTION bodycam_audited(bigint, text[]), bodycam_current_audit_id(),
    bodycam_audit_row_is_current(bigint, text[]),
    account_changes_journal(),
    bodycam_user_create(bigint, text, text[], text),
    bodycam_user_set_roles(bigint, text, text[]), bodycam_user_disable(bigint, text),
    bodycam_case_assign(bigint, text, text, text), bodycam_case_unassign(bigint, text, text),
    bodycam_token_issue(bigint, uuid, text, text, text, timestamptz, text),
    bodycam_token_revoke(bigint, uuid) FROM PUBLIC;

-- A deployment whose application role already exists (infra/postgres/init.sql creates
-- bodycam_app with default privileges that grant it writes on every new table): take those
-- writes back here, and let it call the functions. The embedded stack's role gets the same
-- from bodycam.db._grant_app_role on every `up`.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bodycam_app')
            AND current_user <> 'bodycam_app' THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE
            ON users, case_assignments, api_tokens, account_changes FROM bodycam_app;
        GRANT SELECT ON users, case_assignments, api_tokens, account_changes TO bodycam_app;
        GRANT EXECUTE ON FUNCTION bodycam_user_create(bigint, text, text[], text),
            bodycam_user_set_roles(bigint, text, text[]), bodycam_user_disable(bigint, text),
            bodycam_case_assign(bigint, text, text, text),
            bodycam_case_unassign(bigint, text, text),
            bodycam_token_issue(bigint, uuid, text, text, text, timestamptz, text),
            bodycam_token_revoke(bigint, uuid) TO bodycam_app;
    END IF;
END $$;
