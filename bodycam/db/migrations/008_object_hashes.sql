-- Fixity manifest: the SHA-256 of each derived object (thumbnails) as written, so that a
-- scheduled re-hash can tell whether the stored bytes changed. Originals need no row here:
-- their SHA-256 is videos.sha256 and their key is derived from it.
CREATE TABLE IF NOT EXISTS object_hashes (
    key text PRIMARY KEY,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    written_at timestamptz NOT NULL DEFAULT now()
);
