"""Helpers shared by the actions: audited policy, four-eyes, state and rate refusals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bodycam.accounts import User
from bodycam.context import Context
from bodycam.errors import ConflictError
from bodycam.limits import RateLimitedError
from bodycam.policy import PolicyRefusedError, ReviewRefusedError

# A state refusal (ConflictError: a match already decided, a face confirmed as another entry)
# is audited as the rules' are: an attempt to decide is on record whatever stopped it.
REFUSALS = (PolicyRefusedError, ReviewRefusedError, ConflictError, RateLimitedError)


@contextmanager
def refusals_audited(ctx: Context, user: User, action: str, case: str | None = None,
                     about: str | None = None) -> Iterator[None]:
    """Audit (`refused`, with the reason, the case when the action names one, and `about`,
    the object it was about) a policy, four-eyes, state or rate refusal raised inside, in
    its own transaction because the action's own transaction is rolled back; re-raise."""
    try:
        yield
    except REFUSALS as exc:
        ctx.audit(user.name, "refused", {"attempted": action, "reason": str(exc),
                                         **({"case": case} if case is not None else {}),
                                         **({"object": about} if about else {})})
        raise
