-- An account's searches and enrolments of the last hour are counted before each (search.max_per_hour).
CREATE INDEX IF NOT EXISTS searches_actor ON searches (actor, created_at);
-- Enrolments count too (each is matched against the case's footage at once).
CREATE INDEX IF NOT EXISTS subjects_created_by ON subjects (created_by, created_at);
