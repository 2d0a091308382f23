-- What no role that writes the audit log may do to it, and what the workers' role may do to
-- the leads. Found by attacking a worker host's secrets (2026-12-05): its role pushed the
-- high-water mark a million rows ahead, which stopped every audited action and made the
-- intact log read as deleted, and it confirmed a match no one had reviewed.

-- A row is appended right after the log's last one and links to its hash (audit.append does
-- so under the log's lock): no gap, no row put in the middle.
CREATE FUNCTION audit_log_append_in_order() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev_id bigint;
    prev_digest text;
BEGIN
    SELECT a.id, a.hash INTO prev_id, prev_digest FROM audit_log a ORDER BY a.id DESC LIMIT 1;
    IF NEW.id <> COALESCE(prev_id, 0) + 1
       OR NEW.prev_hash <> COALESCE(prev_digest, repeat('0', 64)) THEN
        RAISE EXCEPTION 'audit row % must follow row % and link to its hash', NEW.id,
            COALESCE(prev_id, 0);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_append_in_order BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_in_order();

-- The high-water mark names a row of the log, as it stands (it already only moves forward).
CREATE FUNCTION audit_head_names_a_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.id = NEW.last_id
                   AND a.hash = NEW.last_hash) THEN
        RAISE EXCEPTION 'audit_head must name a row of the log (row % with its hash)',
            NEW.last_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_head_names_a_row BEFORE INSERT OR UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_names_a_row();

-- The workers make leads (pending) and end unreviewed ones (withdrawn); a decision is a
-- reviewer's, through the server. (The role's column grants: bodycam.db._grant_app_role.)
-- These guards fire for the workers' role only (WHEN), never on the server's writes.
CREATE FUNCTION matches_worker_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND (NEW.status <> 'pending' OR NEW.decided_at IS NOT NULL
                             OR NEW.review_round <> 0 OR NEW.reopened_by IS NOT NULL
                             OR NEW.reopen_reason IS NOT NULL
                             OR NEW.reopened_from IS NOT NULL) THEN
        RAISE EXCEPTION 'a worker makes a new pending match, never % or a reopened one',
            NEW.status;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.status IS DISTINCT FROM OLD.status
                             OR NEW.decided_at IS DISTINCT FROM OLD.decided_at)
       AND NOT (OLD.status = 'pending' AND NEW.status = 'withdrawn') THEN
        RAISE EXCEPTION 'a worker only withdraws a pending match, never % -> %', OLD.status,
            NEW.status;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER matches_worker_guard BEFORE INSERT OR UPDATE ON matches
    FOR EACH ROW WHEN (current_user = 'bodycam_worker')
    EXECUTE FUNCTION matches_worker_guard();

-- Nor does a worker delete a decision: a lead only while it is pending and unreviewed
-- (leads.end_pending), and no track that carries a decided or reviewed lead (deleting it
-- would take the lead and its reviews with it).
CREATE FUNCTION worker_keeps_decisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM matches m
               WHERE (CASE TG_TABLE_NAME WHEN 'matches' THEN m.id = OLD.id
                      ELSE m.track_id = OLD.id END)
                 AND (m.status <> 'pending'
                      OR EXISTS (SELECT 1 FROM reviews r WHERE r.match_id = m.id))) THEN
        RAISE EXCEPTION 'a worker deletes no decided or reviewed lead (% %)', TG_TABLE_NAME,
            OLD.id;
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER matches_worker_keeps_decisions BEFORE DELETE ON matches
    FOR EACH ROW WHEN (current_user = 'bodycam_worker')
    EXECUTE FUNCTION worker_keeps_decisions();
CREATE TRIGGER tracks_worker_keeps_decisions BEFORE DELETE ON tracks
    FOR EACH ROW WHEN (current_user = 'bodycam_worker')
    EXECUTE FUNCTION worker_keeps_decisions();
