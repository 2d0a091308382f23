"""Helpers shared by the actions: audited policy, four-eyes and rate refusals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bodycam.accounts import User
from bodycam.context import Context
from bodycam.limits import RateLimitedError
from bodycam.policy import PolicyRefusedError, ReviewRefusedError

REFUSALS = (PolicyRefusedError, ReviewRefusedError, RateLimitedError)


@contextmanager
def refusals_audited(ctx: Context, user: User, action: str, case: str | None = None
                     ) -> Iterator[None]:
    """Audit (`refused`, with the reason, and the case when the action names one) a policy,
    four-eyes or rate refusal raised inside, in its own transaction because the action's own
    transaction is rolled back; re-raise."""
    try:
        yield
    except REFUSALS as exc:
        ctx.audit(user.name, "refused", {"attempted": action, "reason": str(exc),
                                         **({"case": case} if case is not None else {})})
        raise
