-- Rebuild the per-model HNSW indexes with ef_construction 200 (pgvector's default is 64).
-- On 1M synthetic face tracks (BENCHMARKS.md) the default graph reached recall@10 of only
-- 0.945 (128-d, ef_search 800) and 0.914 (512-d, ef_search 400) for unfiltered searches;
-- with ef_construction 200 the 128-d index gave 0.97-0.98 at the configured ef_search 200.
-- The build costs about three times as long, once; m stays 16 (index size unchanged).
DROP INDEX IF EXISTS tracks_hnsw_dlib;
DROP INDEX IF EXISTS tracks_hnsw_facenet;
CREATE INDEX tracks_hnsw_dlib ON tracks
    USING hnsw ((embedding::vector(128)) vector_cosine_ops) WITH (m = 16, ef_construction = 200)
    WHERE model = 'dlib-resnet';
CREATE INDEX tracks_hnsw_facenet ON tracks
    USING hnsw ((embedding::vector(512)) vector_cosine_ops) WITH (m = 16, ef_construction = 200)
    WHERE model = 'facenet-vggface2';
