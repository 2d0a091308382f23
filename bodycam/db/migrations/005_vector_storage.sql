-- Keep embeddings inline in the row. pgvector stores vectors with STORAGE EXTERNAL, so a 512-d
-- vector (2,056 bytes) goes out of line to TOAST and every exact re-rank or filtered scan pays
-- a TOAST lookup per row: at 1M tracks a case-bound 512-d search took ~72 ms against ~18 ms
-- for 128-d (BENCHMARKS.md). PLAIN applies to rows written from now on.
ALTER TABLE tracks ALTER COLUMN embedding SET STORAGE PLAIN;
ALTER TABLE detections ALTER COLUMN embedding SET STORAGE PLAIN;
ALTER TABLE subject_faces ALTER COLUMN embedding SET STORAGE PLAIN;
