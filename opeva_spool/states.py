"""The job lifecycle in one place: the states and which transitions are allowed.

    launching -> queued -> dispatched -> running -> finished | failed | stopped
                   |          |            |
                   +-> canceled            +-> queued (requeue after a lost host, attempt + 1)
                   (and dispatched -> failed | stopped | queued)

``not_found`` and ``unknown`` are answers, not states a job is ever put in.
"""

import enum

from .exceptions import IllegalTransition


class JobState(str, enum.Enum):
    LAUNCHING = "launching"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELED = "canceled"
    NOT_FOUND = "not_found"
    UNKNOWN = "unknown"

    def __str__(self):
        return self.value

    @property
    def terminal(self):
        return self in TERMINAL_STATES

    @property
    def active(self):
        """Claimed by a host and not yet ended."""
        return self in (JobState.DISPATCHED, JobState.RUNNING)


TERMINAL_STATES = frozenset({JobState.FINISHED, JobState.FAILED, JobState.STOPPED, JobState.CANCELED})

ALLOWED = {
    JobState.LAUNCHING: {JobState.QUEUED, JobState.FAILED},
    JobState.QUEUED: {JobState.DISPATCHED, JobState.CANCELED},
    JobState.DISPATCHED: {JobState.RUNNING, JobState.FAILED, JobState.STOPPED, JobState.QUEUED},
    JobState.RUNNING: {JobState.FINISHED, JobState.FAILED, JobState.STOPPED, JobState.QUEUED},
}


def check_transition(current, target):
    """Raise IllegalTransition (409) unless current -> target is allowed."""
    current, target = JobState(current), JobState(target)
    if target not in ALLOWED.get(current, ()):
        raise IllegalTransition(
            f"a job cannot go from {current.value} to {target.value}", status=current.value
        )
