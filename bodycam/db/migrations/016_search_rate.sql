-- An account's searches of the last hour are counted before each search (search.max_per_hour).
CREATE INDEX IF NOT EXISTS searches_actor ON searches (actor, created_at);
