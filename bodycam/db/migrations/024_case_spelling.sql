-- Case numbers that differ only in letter case name one case: `case-a` beside `CASE-A` split a
-- case in two, and a hold on the one left the other's bystanders to be purged (bb34). A new
-- spelling is refused where a case number first appears (ingest, from incoming/ too, an
-- assignment, a hold), by a lookup of the folded number that these indexes serve.
--
-- `known_cases`: every case number in use (assigned, held, or holding footage or subjects).
-- A view runs with its owner's rights: a worker, which ingests from incoming/ and may not
-- read the account tables, reads case numbers here, never who is assigned.
CREATE OR REPLACE VIEW known_cases AS
    SELECT case_id FROM case_assignments UNION SELECT case_id FROM held_cases
    UNION SELECT case_id FROM videos UNION SELECT case_id FROM subjects;
CREATE INDEX IF NOT EXISTS videos_case_folded ON videos (lower(case_id));
CREATE INDEX IF NOT EXISTS subjects_case_folded ON subjects (lower(case_id));
