"""The job lifecycle in one place: the states, which transitions are allowed, and why attempts end.

    waiting -> queued -> dispatched -> running -> finished | failed | stopped
      |          |          |            |
      +----------+-> canceled            +-> queued (requeue after a lost host, or a retry
                                             after a failure, attempt + 1)
                 (and dispatched -> failed | stopped | queued)

``waiting``: published with dependencies (``after``/``after_any``) not yet met; the server
releases it into the queue, or cancels it when a dependency failed.

``not_found`` and ``unknown`` are answers, not states a job is ever put in.
"""

import enum

from .exceptions import IllegalTransition


class JobState(str, enum.Enum):
    WAITING = "waiting"
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
    JobState.WAITING: {JobState.QUEUED, JobState.CANCELED},
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


class EndReason(str, enum.Enum):
    """Why an attempt ended or was taken away: the ``reason`` of an attempt record and of job-info.

    docs/spool.md lists each with its meaning. The runtime's reasons are also those of
    ``RuntimeFailure``; ``engine_error`` and ``reap_failed`` are only ever logged.
    """

    # The job ran and ended.
    EXIT_CODE = "exit_code"  # it exited non-zero on its own
    STOP_REQUESTED = "stop_requested"  # POST /stop stopped it
    # Its host or agent went away; the attempt is requeued or failed per max_retries.
    HOST_LOST = "host_lost"  # the server judged the host offline
    LEASE_LOST = "lease_lost"  # the agent could not renew its heartbeat; its guard ended the job
    AGENT_RESTARTED = "agent_restarted"  # the host's restarted agent found it and could not re-attach
    AGENT_SHUTDOWN = "agent_shutdown"  # the agent was stopped and the runtime cannot outlive it
    ENTRY_REMOVED = "entry_removed"  # its entry was deleted or requeued by the server: no ending is written
    AGENT_ERROR = "agent_error"  # a bug or an I/O error in the agent while it supervised the job
    # It never ran.
    DEPENDENCY_FAILED = "dependency_failed"  # a job it ran ``after`` ended otherwise than finished, or was deleted
    # The runtime could not start it.
    BAD_COMMAND = "bad_command"
    IMAGE_MISSING = "image_missing"
    IMAGE_PULL_FAILED = "image_pull_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    CREATE_FAILED = "create_failed"
    START_FAILED = "start_failed"
    CLUSTER_REFUSED = "cluster_refused"  # the Slurm cluster refused the job at submit (Slurm's reason in ``error``)
    # A Slurm job ended in one of the cluster's failed states (the state lower-cased; runtimes/slurm_cluster.py).
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    BOOT_FAIL = "boot_fail"
    DEADLINE = "deadline"
    SPECIAL_EXIT = "special_exit"
    REVOKED = "revoked"
    CANCELLED_AT_CLUSTER = "cancelled_at_cluster"  # scancel by someone else than the agent (an operator)
    LOST_AT_CLUSTER = "lost_at_cluster"  # the cluster no longer knows the job, nor how it ended
    # The runtime could not act on a job it runs (logged; the agent retries or ends it as agent_error).
    ENGINE_ERROR = "engine_error"
    REAP_FAILED = "reap_failed"

    def __str__(self):
        return self.value
