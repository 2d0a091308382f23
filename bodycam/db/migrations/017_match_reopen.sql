-- A decided match can be reopened by a supervisor (with a reason, audited): it is pending again
-- in a new review round. The earlier rounds' reviews stay as the record of what was decided;
-- only the current round's count, and a reviewer may review once per round.
ALTER TABLE matches ADD COLUMN IF NOT EXISTS review_round int NOT NULL DEFAULT 0;
ALTER TABLE reviews ADD COLUMN IF NOT EXISTS review_round int NOT NULL DEFAULT 0;
ALTER TABLE reviews DROP CONSTRAINT IF EXISTS reviews_match_id_reviewer_key;
ALTER TABLE reviews ADD CONSTRAINT reviews_once_per_round UNIQUE (match_id, review_round, reviewer);
