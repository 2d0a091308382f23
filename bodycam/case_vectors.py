"""The API server's copy of each searched case's track vectors, for exact case-bound search.

A case-bound search within `search.exact_scan_max` tracks is an exact scan. In Postgres that
scan costs about 0.5 us per track (reaching each row's vector, then pgvector's distance), so
10-15 ms for a case of 20,000 tracks. The server instead keeps the case's vectors as one
unit-normalised matrix and ranks them with one matrix product; Postgres then reads only the
chosen rows (`search.candidate_tracks`).

The copy is never trusted without a check. Each search first reads the fingerprint of the
case's searchable tracks (their count and two 64-bit folds of their ids' hashes) from the
`tracks_searchable` index, in the search's own transaction. A copy whose fingerprint differs
is replaced before use. Any change to what a search may return changes the fingerprint:
- a track added, deleted or purged;
- an embedding nulled (by retention or redact-only mode);
- a track's video moved or deleted.
A track's vector is never rewritten in place. The rows a search returns are re-read and
re-scored by Postgres with the same filters, so a copy can only choose which rows are read.

Vectors are biometric data. The copy lives only in the server's memory, and only up to
`search.vector_cache_mb`. A copy unused for `search.vector_cache_idle_s` is dropped, by a
sweep that runs whether or not searches come. No worker or CLI process holds one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from bodycam.db import Conn

Fingerprint = tuple[int, int, int]  # count, sum and xor of uuid_hash_extended(id, 0)


def held_bytes(tracks: int, dim: int) -> int:
    """Memory a copy of `tracks` vectors takes: float32s and about 40 bytes per id."""
    return tracks * (4 * dim + 40)


@dataclass(frozen=True)
class CaseMatrix:
    """One case's searchable tracks of one model: ids and unit-normalised vectors (rows)."""

    fingerprint: Fingerprint
    ids: list[str]
    vectors: np.ndarray  # float32, (len(ids), dim)

    @property
    def nbytes(self) -> int:
        """Memory held (vectors and ids)."""
        return held_bytes(len(self.ids), self.vectors.shape[1])

    def top(self, queries: np.ndarray, k: int, floor: float = -1.0) -> list[str]:
        """The ids among the k most similar to each query vector (rows of `queries`), less
        those below `floor` for every query vector."""
        if not self.ids:
            return []
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        sims = self.vectors @ q.astype(np.float32).T  # (tracks, queries)
        keep = min(k, len(self.ids))
        chosen: set[int] = set()
        for col in sims.T:
            part = (np.argpartition(-col, keep - 1)[:keep] if keep < len(col)
                    else np.arange(len(col)))
            chosen.update(int(i) for i in part[col[part] >= floor])
        return [self.ids[i] for i in sorted(chosen)]


class CaseVectors:
    """A bounded, thread-safe store of CaseMatrix per (case, model), least recently used out."""

    def __init__(self, max_bytes: int, idle_s: float) -> None:
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[CaseMatrix, float]] = OrderedDict()
        self._sweeper: threading.Thread | None = None
        self.loads = 0  # how many times a case was read into memory (tests, benchmarks)

    def _drop_idle(self, now: float) -> None:
        for key in [k for k, (_, used) in self._entries.items() if now - used > self.idle_s]:
            del self._entries[key]

    def _sweep(self) -> None:
        """Drop idle copies even when no search comes (a daemon thread, started with the
        first copy kept): vectors do not outstay `idle_s` by more than a minute."""
        while True:
            time.sleep(min(60.0, self.idle_s / 2))
            with self._lock:
                self._drop_idle(time.monotonic())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def matrix(self, conn: Conn, case_id: str, model: str, dim: int, where: str,
               params: dict[str, object], fingerprint: Fingerprint) -> CaseMatrix | None:
        """The case's matrix, checked against `fingerprint` (read by the caller in this
        transaction with the same `where`), read from Postgres when missing or stale.

        None when the case would not fit in the cache at all (the caller scans instead).
        """
        key = (case_id, model)
        now = time.monotonic()
        with self._lock:
            self._drop_idle(now)
            hit = self._entries.get(key)
            if hit is not None and hit[0].fingerprint == fingerprint:
                self._entries[key] = (hit[0], now)
                self._entries.move_to_end(key)
                return hit[0]
            self._entries.pop(key, None)  # stale: never kept past a change
        if held_bytes(fingerprint[0], dim) > self.max_bytes:
            return None
        # One row: the vectors in pgvector's binary form (2+2 header bytes, then big-endian
        # float32s) and the ids as 16 bytes each, concatenated in the same order, with the
        # fingerprint of exactly the rows read.
        row = conn.execute(
            f"{FINGERPRINT_SQL}, string_agg(uuid_send(t.id), ''::bytea ORDER BY t.id) AS ids,"
            f" string_agg(vector_send(t.embedding::vector({dim})), ''::bytea ORDER BY t.id)"
            f" AS vecs FROM tracks t JOIN videos v ON v.id = t.video_id WHERE {where}",
            params).fetchone()
        assert row is not None
        n = int(row["n"])
        raw = np.frombuffer(row["vecs"] or b"", np.uint8).reshape(n, 4 + 4 * dim)
        vecs = raw[:, 4:].copy().view(">f4").astype(np.float64)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        blob = bytes(row["ids"] or b"")
        ids = [str(uuid.UUID(bytes=blob[i:i + 16])) for i in range(0, 16 * n, 16)]
        found = (n, int(row["s"]), int(row["x"]))
        # Rows read in this statement's snapshot may differ from the fingerprint's (a track
        # committed in between): such a matrix is used once and not kept.
        m = CaseMatrix(found, ids, vecs.astype(np.float32))
        self.loads += 1
        if found != fingerprint:
            return m
        with self._lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="case-vectors-sweep",
                                                 daemon=True)
                self._sweeper.start()
            self._entries[key] = (m, now)
            total = sum(e.nbytes for e, _ in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                _, (old, _) = self._entries.popitem(last=False)
                total -= old.nbytes
        return m


# Read with the same FROM and WHERE as the search; the index-only scan of tracks_searchable
# answers it (migration 014).
FINGERPRINT_SQL = ("SELECT count(*) AS n, COALESCE(sum(uuid_hash_extended(t.id, 0)), 0) AS s,"
                   " COALESCE(bit_xor(uuid_hash_extended(t.id, 0)), 0) AS x")
