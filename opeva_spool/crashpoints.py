"""Named crash points for the crash tests: ``reach("publish.committing")`` kills this process with SIGKILL when
the environment variable OPEVA_CRASH_AT names that point (comma-separated for several).

Armed only by the environment at import, so a process that was not started with the variable pays one
test of an empty frozenset per point reached. Never set it in production: it exists so that tests can
kill a server or agent at an exact step of a job's life (docs/spool.md, "What survives which crash").
"""

import os
import signal

ENV = "OPEVA_CRASH_AT"
ARMED = frozenset(filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))))


def reach(point: str) -> None:
    """Die here, as kill -9 would, if ``point`` is armed."""
    if ARMED and point in ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
