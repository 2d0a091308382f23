"""The service layer: one function per action, `fn(ctx, user, ...)`, that every edge calls.

Each action checks the role (accounts.require) and the case (accounts.Scope /
require_visible), does the work and writes its audit row in the same transaction. Refusals
(role, case, policy, four-eyes) are audited where they happen, before the error is raised.
The HTTP routes (bodycam.api) and any other edge are thin adapters over these functions.
"""

from __future__ import annotations
