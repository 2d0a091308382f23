-- Search (issue 14): a case-bound search first counts the case's searchable tracks to choose
-- between the exact scan and the HNSW index. This partial index answers that count by an
-- index-only scan per video of the case, without reading the tracks' rows (vectors included).
CREATE INDEX tracks_searchable ON tracks (video_id, model)
    WHERE embedding IS NOT NULL AND purged_at IS NULL;
