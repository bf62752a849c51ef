"""Who is calling: the identity a request carries, and the roles it holds.

The auth plugin (api/app.py) resolves a request's credential to an ``Identity`` and leaves
it in the WSGI environ; routes and services ask ``current()``. With auth off every caller is
the anonymous identity holding every role, so code below never branches on "is auth on".
"""

from __future__ import annotations

from dataclasses import dataclass

import bottle

from .exceptions import Forbidden

READ, SUBMIT, ADMIN, WORKER = "read", "submit", "admin", "worker"
ALL_ROLES = frozenset((READ, SUBMIT, ADMIN, WORKER))
ENVIRON_KEY = "opeva.identity"


@dataclass(frozen=True)
class Identity:
    """A caller: ``user`` is None when auth is off (nobody is known, everybody may do everything)."""

    user: str | None
    roles: frozenset[str]

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def require(self, role: str) -> None:
        if role not in self.roles and ADMIN not in self.roles:
            raise Forbidden(f"{self.user or 'this caller'} lacks the {role!r} role", role=role)

    def check_worker(self, worker_id: str) -> None:
        """A worker credential acts only for the worker it names (an admin, or anyone with auth off, for any)."""
        self.require(WORKER)
        if self.authenticated and ADMIN not in self.roles and self.user != worker_id:
            raise Forbidden(f"the credential of worker {self.user!r} cannot act as worker {worker_id!r}",
                            worker_id=worker_id)


ANONYMOUS = Identity(None, ALL_ROLES)


def current() -> Identity:
    """The identity of the request being served (ANONYMOUS outside a request or with auth off)."""
    try:
        return bottle.request.environ.get(ENVIRON_KEY, ANONYMOUS)
    except RuntimeError:  # no request bound to this thread
        return ANONYMOUS
