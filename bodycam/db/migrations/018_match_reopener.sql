-- Who reopened a match's current review round, why, and from which decision, shown to that
-- round's reviewers; the reopener is never enough on their own to confirm it (as the enroller
-- is not). A lead that ends without a decision but with reviews on record (a reopened one, a
-- partly confirmed one) is kept as `withdrawn` with its reviews when its entry is removed or
-- lapses or face matching is turned off: before, it was deleted and every earlier round's
-- reviews with it. A withdrawn match reopened from a confirmation keeps its track as a
-- confirmed one does.
ALTER TABLE matches ADD COLUMN IF NOT EXISTS reopened_by text;
ALTER TABLE matches ADD COLUMN IF NOT EXISTS reopen_reason text;
ALTER TABLE matches ADD COLUMN IF NOT EXISTS reopened_from text;
ALTER TABLE matches DROP CONSTRAINT IF EXISTS matches_status_check;
ALTER TABLE matches ADD CONSTRAINT matches_status_check
    CHECK (status IN ('pending', 'confirmed', 'rejected', 'withdrawn'));
