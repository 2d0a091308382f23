-- Search (issue 14): the API server keeps each searched case's track vectors in memory
-- (bodycam/case_vectors.py) and checks its copy before every search against a fingerprint of
-- the case's searchable tracks: their count and two folds of their ids' hashes. With the id
-- in the index, that fingerprint (and the count that chooses the exact scan or HNSW) is an
-- index-only scan, as the count was with migration 013.
DROP INDEX IF EXISTS tracks_searchable;
CREATE INDEX tracks_searchable ON tracks (video_id, model) INCLUDE (id)
    WHERE embedding IS NOT NULL AND purged_at IS NULL;
