"""Sending work to Celery by task name: messages carry ids only, never frames or bytes."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from bodycam.errors import TransientError

PROCESS_UNIT = "bodycam.process_unit"
FINALIZE_VIDEO = "bodycam.finalize_video"
INGEST_OBJECT = "bodycam.ingest_object"
REAP = "bodycam.reap"
RECONCILE_INCOMING = "bodycam.reconcile_incoming"
REDACTION_JOB = "bodycam.redaction_job"
# A redaction job runs detectors (a plan) or decodes every frame (a render): the gpu queue's.
QUEUE_FOR = {PROCESS_UNIT: "gpu", FINALIZE_VIDEO: "cpu", INGEST_OBJECT: "cpu", REAP: "cpu",
             RECONCILE_INCOMING: "cpu", REDACTION_JOB: "gpu"}


# Seconds a send waits on the broker's socket, and the sends tried: a broker that stopped
# answering (paused, or a host cut off) held an ingest's answer for as long as it did, 600 s
# and more (bb49); now the send fails in about 10 s and the work is marked for the reaper.
SEND_TIMEOUT_S = 3.0
SEND_TRIES = 3


@lru_cache(maxsize=4)
def client(redis_url: str) -> Celery:
    """A Celery client for sending only (no result backend: state lives in Postgres)."""
    app = Celery("bodycam-client", broker=redis_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_transport_options = {
        "max_retries": 3, "socket_timeout": SEND_TIMEOUT_S,
        "socket_connect_timeout": SEND_TIMEOUT_S}
    app.conf.task_publish_retry_policy = {"max_retries": SEND_TRIES - 1, "interval_start": 0,
                                          "interval_step": 0.2, "interval_max": 0.5}
    return app


def send(redis_url: str, task: str, *args: str | int) -> None:
    """Queue a task by name; raises TransientError if the broker is unreachable.

    Losing a message loses no work: the reaper re-queues pending units it finds stale.
    """
    try:
        client(redis_url).send_task(task, args=list(args), queue=QUEUE_FOR[task])
    except Exception as exc:  # kombu raises several types for an unreachable broker
        raise TransientError(f"broker unreachable: {exc.__class__.__name__}") from exc


def due(redis_url: str, name: str, interval_s: float, owner: str) -> bool:
    """Whether a scheduled task runs now: at most once in 0.8 of its interval across every
    worker, by the broker's clock (a key set only where absent, expiring with the interval).

    Scheduled tasks carry no expiry of Celery's: it is a time stamped by the scheduler's
    clock and read by the worker's, and a worker ten minutes fast dropped every reap and
    reconcile as expired, so stale leases went unreaped (bb14). Without one, a backlog built
    while no worker ran, or a second scheduler, would run each message: this runs one. A
    broker that cannot answer lets the task run (every scheduled task is idempotent)."""
    import redis

    try:
        return bool(_redis(redis_url).set(f"bodycam:due:{name}", owner, nx=True,
                                          px=max(1, int(interval_s * 800))))
    except redis.RedisError:
        return True


@lru_cache(maxsize=4)
def _redis(redis_url: str) -> Any:
    """One client (a pool of connections) per broker URL and process: a scheduled task runs
    every few seconds, and a connection each time was a login each time."""
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
