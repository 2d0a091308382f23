"""Search speed benchmark: synthetic face tracks in pgvector, latency and recall@10 vs exact.

Run `python -m bodycam.bench_search --home /tmp/bench [--n 1000000] [--dims 128,512]`. It starts
(or reuses) an embedded stack in its own BODYCAM_HOME, replaces every video and track there with
synthetic ones, rebuilds the migration's HNSW indexes and measures:

* unfiltered top-10 through the model's HNSW index at several `hnsw.ef_search` values;
* a case-filtered search through bodycam's own `candidate_tracks`, with the configured defaults
  and with each of its two paths forced (exact scan; HNSW with an iterative scan).

Ground truth is numpy brute force over the generated vectors, so it depends on nothing in
Postgres. Results go to `<results>/search-<dim>.json`; `--write-md BENCHMARKS.md` renders every
result file there into the file's search-bench section, leaving the rest of the file untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from bodycam.benchmarks_md import replace_section
from bodycam.config import SearchSettings, Settings
from bodycam.context import Context
from bodycam.db import Pool, connect
from bodycam.search import DIMS, Filters, Query, candidate_tracks, search
from bodycam.services import admin_database_url, resolve
from bodycam.stack import Stack

MODEL_FOR_DIM = {dim: model for model, dim in DIMS.items()}
INDEX_FOR_MODEL = {"dlib-resnet": "tracks_hnsw_dlib", "facenet-vggface2": "tracks_hnsw_facenet"}
MD_START = "<!-- search-bench:start -->"
MD_END = "<!-- search-bench:end -->"
BENCH_CASE = "bench-case-000"


# --- synthetic data --------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


class Synthetic:
    """Clustered unit vectors shaped like face embeddings, with their case assignment.

    Identities are centres drawn around a few hundred broad "appearance groups" (centres in one
    group have cosine ~0.5 to each other, as look-alikes do); each track is a noisy sample of an
    identity (cosine ~0.8 between two samples of one person). Each identity has a home case
    where 80% of its tracks are; the rest are spread over all cases.
    """

    def __init__(self, n: int, dim: int, n_cases: int, n_videos: int, seed: int,
                 groups: int = 200, per_identity: int = 10, noise: float = 0.5) -> None:
        rng = np.random.default_rng(seed + dim)
        self.dim, self.noise, self.rng = dim, noise, rng
        n_ids = max(1, n // per_identity)
        g = _unit(rng.standard_normal((groups, dim), dtype=np.float32))
        grp = rng.integers(0, groups, n_ids)
        self.centres = _unit(g[grp] + rng.standard_normal((n_ids, dim), dtype=np.float32)
                             / np.float32(np.sqrt(dim)))
        self.identity = rng.integers(0, n_ids, n)
        self.vectors = np.empty((n, dim), np.float32)
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            self.vectors[lo:hi] = self.sample(self.identity[lo:hi])
        home = rng.integers(0, n_cases, n_ids)[self.identity]
        stray = rng.random(n) >= 0.8
        self.case = np.where(stray, rng.integers(0, n_cases, n), home)
        per_case = n_videos // n_cases
        # videos are numbered case-major: case c owns videos [c*per_case, (c+1)*per_case)
        self.video = self.case * per_case + rng.integers(0, per_case, n)
        # Stored in video order, as the pipeline writes them (a video's tracks commit together):
        # a case's tracks then sit on few heap pages, not one page each.
        order = np.argsort(self.video, kind="stable")
        self.vectors = self.vectors[order]
        self.identity, self.case, self.video = (self.identity[order], self.case[order],
                                                self.video[order])

    def sample(self, identities: np.ndarray) -> np.ndarray:
        """New noisy unit samples of the given identities (also how queries are made)."""
        noise = self.rng.standard_normal((len(identities), self.dim), dtype=np.float32)
        return _unit(self.centres[identities]
                     + noise * np.float32(self.noise / np.sqrt(self.dim)))

    def exact_top(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None
                  ) -> list[set[int]]:
        """The exact k nearest track indices (cosine) of each query, optionally within mask."""
        idx = np.arange(len(self.vectors)) if mask is None else np.flatnonzero(mask)
        out: list[set[int]] = []
        for lo in range(0, len(queries), 50):
            sims = queries[lo:lo + 50] @ self.vectors[idx].T
            top = np.argpartition(-sims, k, axis=1)[:, :k]
            out += [{int(i) for i in idx[row]} for row in top]
        return out


def track_uuid(dim: int, i: int) -> uuid.UUID:
    """A track id that encodes (dim, index) so results map back to the generated vectors."""
    return uuid.UUID(int=(dim << 64) | i)


def track_index(track_id: str) -> int:
    """The generated-vector index a track id encodes."""
    return uuid.UUID(track_id).int & ((1 << 64) - 1)


def video_uuid(v: int) -> uuid.UUID:
    """A synthetic video's id."""
    return uuid.UUID(int=(1 << 120) | v)


# --- loading ---------------------------------------------------------------------------------

def _index_sql() -> dict[str, str]:
    """The migrations' latest CREATE INDEX statement for each HNSW index, by index name."""
    out: dict[str, str] = {}
    folder = resources.files("bodycam.db") / "migrations"
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".sql")),
                       key=lambda p: p.name):
        found = re.findall(r"(CREATE INDEX (tracks_hnsw_\w+) ON tracks\s+USING hnsw[^;]+);",
                           path.read_text())
        out.update({name: " ".join(stmt.split()) for stmt, name in found})
    return out


def _build_params(stmt: str) -> tuple[int, int]:
    """(m, ef_construction) of a CREATE INDEX statement; pgvector's defaults when absent."""
    m = re.search(r"\bm = (\d+)", stmt)
    ef = re.search(r"\bef_construction = (\d+)", stmt)
    return (int(m.group(1)) if m else 16, int(ef.group(1)) if ef else 64)


MIGRATION_M, MIGRATION_EF_CONSTRUCTION = _build_params(_index_sql()["tracks_hnsw_dlib"])


def load_videos(conn: psycopg.Connection[Any], n_cases: int, n_videos: int) -> None:
    """Replace all videos (and, by cascade, tracks) with synthetic ones spread over cases."""
    conn.execute("TRUNCATE videos CASCADE")
    per_case = n_videos // n_cases
    base = datetime(2025, 1, 1, tzinfo=UTC)
    cols = ("id, case_id, sha256, object_key, original_filename, size_bytes, container, codec,"
            " width_px, height_px, duration_s, media, uploader, officer, device, recorded_at,"
            " status, stage, progress")
    with conn.cursor() as cur, cur.copy(f"COPY videos ({cols}) FROM STDIN") as copy:
        for v in range(n_cases * per_case):
            sha = hashlib.sha256(f"bench-video-{v}".encode()).hexdigest()
            copy.write_row((video_uuid(v), f"bench-case-{v // per_case:03d}", sha,
                            f"originals/{sha}", f"bench-{v}.mp4", 1_000_000, "mp4", "h264",
                            1920, 1080, 600.0, "{}", "bench", f"officer-{v % 97}",
                            f"cam-{v % 211}", base + timedelta(hours=v), "done", "done", 1.0))


def load_tracks(conn: psycopg.Connection[Any], data: Synthetic, model: str,
                log: Callable[[str], None]) -> float:
    """Binary COPY of the synthetic tracks of one model. Returns seconds taken."""
    t0 = time.perf_counter()
    dim = data.dim
    cols = ("id, video_id, chunk_idx, scene_idx, start_s, end_s, n_detections, quality, model,"
            " model_version, embedding")
    starts = data.rng.random(len(data.vectors)) * 590.0
    with conn.cursor() as cur, cur.copy(
            f"COPY tracks ({cols}) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["uuid", "uuid", "int4", "int4", "float8", "float8", "int4", "float4",
                        "text", "text", "vector"])
        for i in range(len(data.vectors)):
            s = float(starts[i])
            copy.write_row((track_uuid(dim, i), video_uuid(int(data.video[i])), 0, i % 50, s,
                            s + 2.0, 10, 0.9, model, "bench", data.vectors[i]))
            if i and i % 200_000 == 0:
                log(f"  {i} tracks copied ({time.perf_counter() - t0:.0f} s)")
    return time.perf_counter() - t0


def build_index(conn: psycopg.Connection[Any], model: str, maintenance_work_mem: str,
                workers: int, m: int, ef_construction: int) -> float:
    """Create the migrations' HNSW index of one model with these build parameters (the
    migrations' own unless the bench is told otherwise). Returns seconds taken."""
    name = INDEX_FOR_MODEL[model]
    stmt = re.sub(r" WITH \([^)]*\)", "", _index_sql()[name])
    stmt = stmt.replace(" WHERE ", f" WITH (m = {int(m)}, ef_construction ="
                                   f" {int(ef_construction)}) WHERE ")
    conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
    conn.execute(f"SET max_parallel_maintenance_workers = {int(workers)}")
    t0 = time.perf_counter()
    conn.execute(stmt)
    return time.perf_counter() - t0


@contextmanager
def niced(pid: int, nice: int) -> Iterator[None]:
    """This process and the postmaster run niced while loading (backends forked meanwhile
    inherit it); measurements afterwards run at the usual priority on fresh connections."""
    pids = [0, pid]
    before = [os.getpriority(os.PRIO_PROCESS, p) for p in pids]
    for p in pids:
        os.setpriority(os.PRIO_PROCESS, p, nice)
    try:
        yield
    finally:
        for p, b in zip(pids, before, strict=True):
            os.setpriority(os.PRIO_PROCESS, p, b)


# --- measuring -------------------------------------------------------------------------------

def _summary(lat_s: list[float], recalls: list[float]) -> dict[str, float]:
    ms = np.asarray(lat_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "recall_at_10": round(float(np.mean(recalls)), 4),
            "min_recall": round(float(np.min(recalls)), 2),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def measure_unfiltered(url: str, data: Synthetic, model: str, queries: np.ndarray,
                       truth: list[set[int]], ef: int) -> dict[str, float]:
    """Top-10 straight from the model's HNSW index at one ef_search."""
    dim = data.dim
    sql = (f"SELECT id::text FROM tracks WHERE model = '{model}'"
           f" ORDER BY embedding::vector({dim}) <=> %s::vector({dim}) LIMIT 10")
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"SET hnsw.ef_search = {int(ef)}")
        for q in queries[:20]:  # warm the connection and the plan
            conn.execute(sql, (q,)).fetchall()
        lat, rec = [], []
        for q, t in zip(queries, truth, strict=True):
            t0 = time.perf_counter()
            rows = conn.execute(sql, (q,)).fetchall()
            lat.append(time.perf_counter() - t0)
            rec.append(len({track_index(r[0]) for r in rows} & t) / 10)
    return {"ef_search": ef, **_summary(lat, rec)}


def measure_filtered(url: str, settings: Settings, data: Synthetic, model: str,
                     queries: np.ndarray, truth: list[set[int]], k: int) -> dict[str, float]:
    """Bodycam's own `candidate_tracks` for a case filter; recall of its top 10."""
    lat, rec = [], []
    with connect(url) as conn:
        for i, (q, t) in enumerate(zip(queries, truth, strict=True)):
            query = Query("track", [q], model, f"bench:{i}")
            t0 = time.perf_counter()
            found = candidate_tracks(conn, settings, query, BENCH_CASE, Filters(), k=k)
            lat.append(time.perf_counter() - t0)
            conn.commit()  # ends the transaction, as search() does, so SET LOCAL resets
            rec.append(len({track_index(c.track_id) for c in found[:10]} & t) / 10)
    return {"k": k, "ef_search": settings.search.ef_search,
            "exact_scan_max": settings.search.exact_scan_max, **_summary(lat, rec)}


def measure_search(ctx: Context, data: Synthetic, model: str, queries: np.ndarray,
                   truth: list[set[int]], limit: int = 10) -> dict[str, object]:
    """`search()` itself, end to end, as the API calls it for a track query: the policy
    check, the candidates, the leads and appearances, the `searches` row, the audit row and
    its anchor object in S3, each in its own transaction as in production.

    Each query's threshold is its 10th exact similarity (so every exact top-10 track is a
    lead); recall is the share of the exact top 10 among the tracks of the returned
    appearances. `parts_ms` splits the p50 into the candidate stage (timed on its own,
    with the same k and floor) and the rest (record, audit, anchor).
    """
    lat, rec, cand = [], [], []
    for i, (q, t) in enumerate(zip(queries, truth, strict=True)):
        query = Query("track", [q], model, f"bench:{i}")
        thr = float(min(float(q @ data.vectors[j]) for j in t)) - 1e-4
        t0 = time.perf_counter()
        res = search(ctx, query, BENCH_CASE, "benchmark", "bench", threshold=thr, limit=limit)
        lat.append(time.perf_counter() - t0)
        found = {track_index(tid) for a in res.results for tid in a.track_ids}
        rec.append(len(found & t) / 10)
        with ctx.db() as conn:
            t1 = time.perf_counter()
            candidate_tracks(conn, ctx.settings, query, BENCH_CASE, Filters(),
                             k=max(200, limit * 20), cache=ctx.vectors, floor=thr)
            cand.append(time.perf_counter() - t1)
    p50, c50 = float(np.percentile(lat, 50)) * 1000, float(np.percentile(cand, 50)) * 1000
    # The first search of the case reads its vectors into the server's copy (when it keeps
    # one): it is in the percentiles and also reported on its own.
    return {"limit": limit, "exact_scan_max": ctx.settings.search.exact_scan_max,
            **_summary(lat, rec), "first_ms": round(lat[0] * 1000, 2),
            "parts_ms": {"candidates_p50": round(c50, 2), "rest_p50": round(p50 - c50, 2)}}


def _plan(url: str, model: str, dim: int, q: np.ndarray) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        rows = conn.execute(
            f"EXPLAIN SELECT id FROM tracks WHERE model = '{model}' ORDER BY"
            f" embedding::vector({dim}) <=> %s::vector({dim}) LIMIT 10", (q,)).fetchall()
    return "\n".join(re.sub(r"'\[[^']*\]'", "'[...]'", str(r[0])) for r in rows)


def machine_facts() -> dict[str, object]:
    """CPU model, cores and memory of this machine."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kb = 0
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kb / 1024**2, 1)}


# --- the run ---------------------------------------------------------------------------------

def _check_reusable(conn: psycopg.Connection[Any], model: str, n: int, m: int,
                    ef_construction: int, hnsw: bool) -> None:
    """--reuse: the table must hold exactly this run's tracks, indexed with its parameters
    (with `hnsw`; a --no-hnsw run needs only the tracks)."""
    row = conn.execute("SELECT count(*) FROM tracks WHERE model = %s", (model,)).fetchone()
    opts = conn.execute("SELECT reloptions FROM pg_class WHERE relname = %s",
                        (INDEX_FOR_MODEL[model],)).fetchone()
    have = dict(o.split("=", 1) for o in ((opts[0] if opts else None) or []))
    built = (int(have.get("m", 16)), int(have.get("ef_construction", 64)))
    if row is not None and row[0] == n and not hnsw:
        return
    if row is None or row[0] != n or opts is None or built != (m, ef_construction):
        raise SystemExit(f"--reuse: the bench stack does not hold {n} {model} tracks indexed"
                         f" with m={m}, ef_construction={ef_construction}; run without --reuse")


def run_dim(stack_state: dict[str, object], admin_url: str, app_url: str, dim: int, n: int,
            n_queries: int, args: argparse.Namespace, log: Callable[[str], None],
            save: Callable[[dict[str, Any]], None],
            previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load, index and measure one dimension; `save` gets the record after each measurement.

    With `previous` (the saved record of the run that loaded this stack, --reuse), the tracks
    and index already in the stack are measured again instead; the vectors are regenerated
    from the seed for the ground truth. Returns the result record.
    """
    model = MODEL_FOR_DIM[dim]
    log(f"[{dim}-d] generating {n} vectors")
    t0 = time.perf_counter()
    data = Synthetic(n, dim, args.cases, args.videos, args.seed)
    log(f"[{dim}-d] generated in {time.perf_counter() - t0:.0f} s")
    pg_pid = next(int(str(p["pid"])) for p in stack_state["processes"]  # type: ignore[attr-defined]
                  if p["name"] == "postgres")
    with niced(pg_pid, args.nice), psycopg.connect(admin_url, autocommit=True) as conn:
        register_vector(conn)
        if previous is not None:
            _check_reusable(conn, model, n, args.m, args.ef_construction, not args.no_hnsw)
            log(f"[{dim}-d] reusing the loaded tracks and index (built {previous['measured_at']})")
            copy_s, build_s, vacuum_s = (float(previous[k]) for k in ("copy_s", "build_s",
                                                                       "vacuum_s"))
            load_before = tuple(previous["load_avg_before_build"])
        else:
            conn.execute("SET synchronous_commit = off")
            for name in INDEX_FOR_MODEL.values():
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            load_videos(conn, args.cases, args.videos)
            log(f"[{dim}-d] copying tracks")
            copy_s = load_tracks(conn, data, model, log)
            log(f"[{dim}-d] copied in {copy_s:.0f} s; building HNSW")
            load_before = os.getloadavg()
            build_s = 0.0
            if not args.no_hnsw:
                build_s = build_index(conn, model, args.maintenance_work_mem,
                                      args.build_workers, args.m, args.ef_construction)
                log(f"[{dim}-d] index built in {build_s:.0f} s")
            for other, name in INDEX_FOR_MODEL.items():  # the schema keeps both indexes
                if other != model:
                    conn.execute(_index_sql()[name])
            t1 = time.perf_counter()
            # The COPY committed asynchronously: until its commit record is flushed, VACUUM
            # may not mark the pages all-visible, and the case counts and fingerprints would
            # read every row instead of the index alone (as after production inserts, which
            # commit synchronously and are vacuumed by autovacuum).
            conn.execute("CHECKPOINT")
            conn.execute("VACUUM ANALYZE videos")
            conn.execute("VACUUM ANALYZE tracks")
            # Seen here: a VACUUM run while an automatic ANALYZE of the load still holds its
            # snapshot cannot mark the loaded pages all-visible. Again until it can (1 min).
            for _ in range(12):
                vis = conn.execute("SELECT relallvisible::float / greatest(relpages, 1)"
                                   " FROM pg_class WHERE relname = 'tracks'").fetchone()
                if vis is None or vis[0] >= 0.99:
                    break
                log(f"[{dim}-d] {vis[0]:.0%} of the pages all-visible: VACUUM again")
                time.sleep(5)
                conn.execute("VACUUM tracks")
            vacuum_s = time.perf_counter() - t1
            for _ in range(60):  # measure on a quiet database: no autovacuum still at work
                busy = conn.execute("SELECT count(*) FROM pg_stat_activity"
                                    " WHERE backend_type = 'autovacuum worker'").fetchone()
                if busy is None or not busy[0]:
                    break
                time.sleep(2)
            conn.execute("CHECKPOINT")  # the pages VACUUM dirtied are written before measuring
        size = conn.execute("SELECT COALESCE(pg_size_pretty(pg_relation_size(to_regclass(%s))),"
                            " 'none'), pg_size_pretty(pg_total_relation_size('tracks'))",
                            (INDEX_FOR_MODEL[model],)).fetchone()
        versions = conn.execute(
            "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension"
            " WHERE extname = 'vector'), current_setting('shared_buffers'),"
            " current_setting('work_mem')").fetchone()
    assert size is not None and versions is not None
    load_during_build = (tuple(previous["load_avg_after_build"]) if previous is not None
                         else os.getloadavg())

    ids = data.rng.integers(0, len(data.centres), n_queries)
    queries = data.sample(ids)
    log(f"[{dim}-d] exact ground truth (numpy)")
    truth = [] if args.no_hnsw else data.exact_top(queries, 10)  # for the unfiltered sweep
    plan = _plan(app_url, model, dim, queries[0])
    log(plan)
    record: dict[str, Any] = {
        "dim": dim, "model": model, "n": n, "queries": n_queries,
        "identities": len(data.centres), "cases": args.cases, "videos": args.videos,
        "postgres": versions[0], "pgvector": versions[1], "shared_buffers": versions[2],
        "work_mem": versions[3], "hnsw_m": args.m, "hnsw_ef_construction": args.ef_construction,
        # How the index was built: by the loading run when reused.
        "maintenance_work_mem": (previous or {}).get("maintenance_work_mem",
                                                     args.maintenance_work_mem),
        "max_parallel_maintenance_workers": (previous or {}).get(
            "max_parallel_maintenance_workers", args.build_workers),
        "copy_s": round(copy_s, 1), "build_s": round(build_s, 1), "vacuum_s": round(vacuum_s, 1),
        "index_size": size[0], "table_size": size[1],
        "load_avg_before_build": [round(x, 2) for x in load_before],
        "load_avg_after_build": [round(x, 2) for x in load_during_build],
        "plan": plan, "unfiltered": [], "filtered": [],
        "machine": machine_facts(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    record["hnsw"] = not args.no_hnsw
    for ef in [] if args.no_hnsw else args.ef:
        r = measure_unfiltered(app_url, data, model, queries, truth, ef)
        log(f"[{dim}-d] unfiltered {r}")
        record["unfiltered"].append(r)
        save(record)

    # Filtered: queries are new samples of people who appear in the benchmark case.
    in_case = data.case == 0
    case_ids = data.identity[data.rng.choice(np.flatnonzero(in_case), n_queries)]
    fq = data.sample(case_ids)
    ftruth = data.exact_top(fq, 10, in_case)
    record["case_tracks"] = int(in_case.sum())
    record["case_selectivity"] = round(float(in_case.mean()), 4)
    defaults = SearchSettings()
    variants: list[tuple[str, SearchSettings, int]] = [
        ("configured defaults, k=10", defaults, 10),
        ("configured defaults, k=400 (what search() asks)", defaults, 400),
        ("exact scan forced, k=10", defaults.model_copy(update={"exact_scan_max": 10**9}), 10),
    ]
    for ef in [] if args.no_hnsw else args.ef:
        variants.append((f"HNSW path (exact_scan_max=0; planner decides), ef_search={ef}, k=10",
                         defaults.model_copy(update={"exact_scan_max": 0, "ef_search": ef}), 10))
    if args.skip_filtered:
        variants = []
    base = Settings(home=args.home)
    for label, ss, k in variants:
        s = base.model_copy(update={"search": ss})
        r = measure_filtered(app_url, s, data, model, fq, ftruth, k)
        log(f"[{dim}-d] filtered {label}: {r}")
        record["filtered"].append({"label": label, **r})
        save(record)
    if not args.skip_filtered:
        # Synthetic similarities sit below the calibrated floor of real faces: the bench's
        # own settings lower it so that the threshold can be each query's 10th similarity.
        s = base.model_copy(update={"search": defaults.model_copy(update={
            "threshold_floor": {model: -1.0}, "default_threshold": {model: 0.0}})})
        svc = resolve(s)
        record["search_end_to_end"] = []
        for label, ctx in (
                ("new connection", Context(settings=s, services=svc)),
                ("pooled", Context(settings=s, services=svc,
                                   pool=Pool(svc.database_url, s.server.db_idle_connections))),
                ("server (pooled, vector cache)", Context.server(s))):
            try:
                e2e = measure_search(ctx, data, model, fq, ftruth)
            finally:
                if ctx.pool is not None:
                    ctx.pool.close()
            log(f"[{dim}-d] search() end to end, {label}: {e2e}")
            record["search_end_to_end"].append({"connections": label, **e2e})
            save(record)

    return record


# --- BENCHMARKS.md ---------------------------------------------------------------------------

def render_section(results: list[dict[str, Any]], notes: str = "") -> str:
    """The search-bench section of BENCHMARKS.md, markers included; notes go after the intro."""
    lines = [MD_START, "## Search speed (pgvector HNSW)", ""]
    if results:
        m = results[0]["machine"]
        lines += [
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, shared with other"
            " test runs (load averages below). "
            f"PostgreSQL {results[0]['postgres']} + pgvector {results[0]['pgvector']} from the"
            f" embedded stack (shared_buffers {results[0]['shared_buffers']}: the embedded"
            " default, a quarter of RAM).",
            "",
            "Data: synthetic clustered unit vectors (identities around 200 look-alike groups,"
            " cosine ~0.5 between look-alikes, ~0.8 between two tracks of one person, ~10 tracks"
            " per identity), loaded by binary COPY into the real `videos` and `tracks` tables;"
            " queries are fresh noisy samples of stored identities. Recall@10 is measured"
            " against numpy brute force over the generated vectors. Reproduce with"
            " `python -m bodycam.bench_search --home /tmp/bench --n N --dims D`.",
            "",
        ]
    if notes.strip():
        lines += [notes.strip(), ""]
    for r in sorted(results, key=lambda x: (x["dim"], -x["n"], x["hnsw_ef_construction"])):
        lines += [
            f"### {r['dim']}-d ({r['model']}), N = {r['n']:,} tracks, HNSW m={r['hnsw_m']},"
            f" ef_construction={r['hnsw_ef_construction']}",
            "",
            "- The migrations' partial expression index, built with"
            + (" the shipped parameters (migration 006)"
               if (r["hnsw_m"], r["hnsw_ef_construction"])
               == (MIGRATION_M, MIGRATION_EF_CONSTRUCTION)
               else " pgvector's default parameters (before migration 006)"
               if (r["hnsw_m"], r["hnsw_ef_construction"]) == (16, 64)
               else " other parameters than the shipped ones") + "; maintenance_work_mem"
            f" {r['maintenance_work_mem']}, max_parallel_maintenance_workers"
            f" {r['max_parallel_maintenance_workers']}.",
            f"- COPY {r['copy_s']:.0f} s; index build {r['build_s']:.0f} s"
            f" ({r['build_s'] / 60:.1f} min); index {r['index_size']}, table+indexes"
            f" {r['table_size']}. Load average (1/5/15 min) before build"
            f" {'/'.join(str(x) for x in r['load_avg_before_build'])}, after"
            f" {'/'.join(str(x) for x in r['load_avg_after_build'])}.",
            f"- {r['queries']} queries per row; latency is client wall time on loopback.",
            "",
            "Unfiltered top-10 from the HNSW index:",
            "",
            "| ef_search | p50 ms | p95 ms | recall@10 | min recall | load avg |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for u in r["unfiltered"]:
            lines.append(f"| {u['ef_search']} | {u['p50_ms']} | {u['p95_ms']} |"
                         f" {u['recall_at_10']:.3f} | {u['min_recall']} | {u['load_avg_1m']} |")
        lines += [
            "",
            f"Case-filtered through `candidate_tracks` (case of {r['case_tracks']:,} tracks,"
            f" {r['case_selectivity'] * 100:.1f}% selectivity; count + search + exact re-rank):",
            "",
            "| variant | p50 ms | p95 ms | recall@10 | load avg |",
            "|---|---:|---:|---:|---:|",
        ]
        for f in r["filtered"]:
            lines.append(f"| {f['label']} | {f['p50_ms']} | {f['p95_ms']} |"
                         f" {f['recall_at_10']:.3f} | {f['load_avg_1m']} |")
        lines.append("")
    lines.append(MD_END)
    return "\n".join(lines)


E2E_START = "<!-- search-e2e:start -->"
E2E_END = "<!-- search-e2e:end -->"


def render_e2e_section(results: list[dict[str, Any]], notes: str = "") -> str:
    """The `search()` end-to-end section of BENCHMARKS.md, markers included."""
    lines = [E2E_START, "## Search end to end (`search()`)", ""]
    if notes.strip():
        lines += [notes.strip(), ""]
    lines += [
        "`search()` as the API server runs it for a track query in one case: policy check,"
        " candidates (the case's count or fingerprint, then the exact scan, the server's"
        " checked copy of the case's vectors, or the HNSW index), leads and time ranges,"
        " the `searches` row, the sealed audit row and its anchor object in S3. Each query's"
        " threshold is its 10th exact similarity, so recall@10 counts the exact top 10 among"
        " the returned tracks. `new connection`: one login per transaction and an exact scan"
        " per search, the baseline, measured in the same run; `pooled`: the server's kept"
        " connections (server.db_idle_connections); `server`: kept connections and the copy"
        " of the case's vectors (search.vector_cache_mb), as the API server runs. `first`:"
        " the run's first search, which reads the case into the copy (in the percentiles too)."
        " Rows measured before 2026-12-01T20:40 ran an older `search()` (a count query, the"
        " whole row carried through the exact scan's sort, two transactions). Reproduce with"
        " `python -m bodycam.bench_search --home /tmp/bench --n N --dims D --write-e2e-md"
        " BENCHMARKS.md`.",
        "",
        "| measured | N | dim | HNSW index | case tracks | connections | p50 ms | p95 ms |"
        " first ms | recall@10 | candidates p50 ms | the rest p50 ms | load avg |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda x: str(x["measured_at"])):
        for e in r.get("search_end_to_end", []):
            lines.append(
                f"| {r['measured_at'][:16]} | {r['n']:,} | {r['dim']} |"
                f" {'built' if r.get('hnsw', True) else 'none'} | {r['case_tracks']:,} |"
                f" {e['connections']} |"
                f" {e['p50_ms']} | {e['p95_ms']} | {e.get('first_ms', '')} |"
                f" {e['recall_at_10']:.3f} |"
                f" {e['parts_ms']['candidates_p50']} | {e['parts_ms']['rest_p50']} |"
                f" {e['load_avg_1m']} |")
    lines += ["", E2E_END]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) only the search-bench section of BENCHMARKS.md."""
    replace_section(path, section, MD_START, MD_END)


# --- entry point -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with --write-md only, render saved results)."""
    p = argparse.ArgumentParser(prog="python -m bodycam.bench_search", description=__doc__)
    p.add_argument("--home", type=Path, required=True, help="BODYCAM_HOME of the bench stack")
    p.add_argument("--n", type=int, default=1_000_000, help="tracks per dimension")
    p.add_argument("--dims", default="128,512", help="comma-separated: 128 and/or 512")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ef", default="40,100,200,400", help="ef_search values to measure")
    p.add_argument("--cases", type=int, default=50)
    p.add_argument("--videos", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--maintenance-work-mem", default="6GB")
    p.add_argument("--build-workers", type=int, default=1,
                   help="max_parallel_maintenance_workers for the HNSW build")
    p.add_argument("--m", type=int, default=MIGRATION_M,
                   help=f"HNSW m (migrations: {MIGRATION_M})")
    p.add_argument("--ef-construction", type=int, default=MIGRATION_EF_CONSTRUCTION,
                   help=f"HNSW ef_construction (migrations: {MIGRATION_EF_CONSTRUCTION})")
    p.add_argument("--skip-filtered", action="store_true", help="only the unfiltered sweep")
    p.add_argument("--no-hnsw", action="store_true",
                   help="build no HNSW index: case-bound searches of cases within"
                        " search.exact_scan_max need none (the 10M design)")
    p.add_argument("--reuse", action="store_true",
                   help="measure the tracks and index already loaded by the run that wrote"
                        " this dim's result file (same --n/--m/--ef-construction/--tag)")
    p.add_argument("--tag", default="", help="suffix of the result file (variants of one dim)")
    p.add_argument("--nice", type=int, default=10, help="Postgres niceness while loading")
    p.add_argument("--results", type=Path, help="where result JSON goes (default HOME/results)")
    p.add_argument("--write-md", type=Path,
                   help="render all results (and RESULTS/notes.md) into this markdown file")
    p.add_argument("--write-e2e-md", type=Path,
                   help="render the search() end-to-end figures of all results into this file")
    p.add_argument("--no-run", action="store_true", help="only render (--write-md)")
    args = p.parse_args(argv)
    args.ef = [int(x) for x in args.ef.split(",")]
    home = args.home.expanduser().resolve()
    if home == (Path.cwd() / ".bodycam").resolve():
        raise SystemExit("use a scratch BODYCAM_HOME, not the repository's .bodycam")
    args.home = home
    results_dir = args.results or home / "results"

    def log(msg: str) -> None:
        print(f"{datetime.now():%H:%M:%S} {msg}", flush=True)

    if not args.no_run:
        os.environ["BODYCAM_HOME"] = str(home)
        settings = Settings(home=home, cpu_workers=0, gpu_workers=0)
        log(f"stack up in {home}")
        state = Stack(settings).up(progress=log)
        svc = resolve(settings)
        results_dir.mkdir(parents=True, exist_ok=True)
        for dim in (int(d) for d in args.dims.split(",")):
            if dim not in MODEL_FOR_DIM:
                raise SystemExit(f"--dims: {dim} is not an embedder dimension"
                                 f" {sorted(DIMS.values())}")
            out = results_dir / f"search-{dim}{args.tag}.json"

            def save(rec: dict[str, Any], out: Path = out) -> None:
                out.write_text(json.dumps(rec, indent=2))

            previous = None
            if args.reuse:
                if not out.exists():
                    raise SystemExit(f"--reuse: {out} (the loading run's record) is missing")
                previous = json.loads(out.read_text())
            run_dim(state, admin_database_url(settings), svc.database_url, dim, args.n,
                    args.queries, args, log, save, previous)
            log(f"wrote {out}")
            _render(results_dir, args.write_md, args.write_e2e_md)
    else:
        _render(results_dir, args.write_md, args.write_e2e_md)


def _render(results_dir: Path, md: Path | None, e2e_md: Path | None) -> None:
    """Render every result file in results_dir (and its notes.md, e2e-notes.md) into the
    files' sections."""
    results = [json.loads(f.read_text()) for f in sorted(results_dir.glob("search-*.json"))]
    if md is not None:
        notes = results_dir / "notes.md"
        write_section(md, render_section(results, notes.read_text() if notes.exists() else ""))
    if e2e_md is not None:
        notes = results_dir / "e2e-notes.md"
        replace_section(e2e_md, render_e2e_section(
            results, notes.read_text() if notes.exists() else ""), E2E_START, E2E_END)


if __name__ == "__main__":
    main()
