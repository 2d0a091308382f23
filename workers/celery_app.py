"""The Celery app: Redis broker, no result backend, ids-only JSON messages, two queues."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_postrun

from bodycam.config import get_settings
from bodycam.fixity import FIXITY_TASK
from bodycam.processing import release_free_heap
from bodycam.queue import REAP, RECONCILE_INCOMING
from bodycam.retention import PURGE_TASK
from bodycam.services import resolve

_settings = get_settings()
_services = resolve(_settings)

app = Celery("bodycam", broker=_services.redis_url, include=["workers.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_default_queue="cpu",
    # A unit is acknowledged after it ran; a worker lost mid-task returns it to the queue.
    # Duplicate deliveries are harmless: a unit is claimed in Postgres with a lease first.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # No `expires`: Celery stamps it with the scheduler's clock and the worker reads it with
    # its own, so a skewed worker dropped every run. Each task asks `queue.due` instead.
    beat_schedule={
        "reap-leases": {"task": REAP, "schedule": _settings.jobs.reap_interval_s,
                        "options": {"queue": "cpu"}},
        "reconcile-incoming": {"task": RECONCILE_INCOMING,
                               "schedule": _settings.jobs.reconcile_interval_s,
                               "options": {"queue": "cpu"}},
        "purge": {"task": PURGE_TASK, "schedule": _settings.jobs.purge_interval_s,
                  "options": {"queue": "cpu"}},
        "fixity": {"task": FIXITY_TASK, "schedule": _settings.jobs.fixity_interval_s,
                   "options": {"queue": "cpu"}},
    },
)


@task_postrun.connect
def _after_task(**_: Any) -> None:
    """A worker outlives many videos: what a task freed goes back to the system."""
    release_free_heap()
