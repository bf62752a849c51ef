"""The lifecycle table: allowed transitions pass, every other one is refused with 409."""

import pytest

from opeva_spool.exceptions import IllegalTransition
from opeva_spool.states import ALLOWED, TERMINAL_STATES, JobState, check_transition

EXPECTED_ALLOWED = {
    ("waiting", "queued"), ("waiting", "canceled"),
    ("queued", "dispatched"), ("queued", "canceled"),
    ("dispatched", "running"), ("dispatched", "failed"), ("dispatched", "stopped"), ("dispatched", "queued"),
    ("running", "finished"), ("running", "failed"), ("running", "stopped"), ("running", "queued"),
}


@pytest.mark.parametrize("current", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_transition_table(current, target):
    if (current.value, target.value) in EXPECTED_ALLOWED:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition) as raised:
            check_transition(current, target)
        assert raised.value.status == 409 and raised.value.extra["status"] == current.value


def test_terminal_states_have_no_way_out():
    for state in TERMINAL_STATES:
        assert state.terminal and state not in ALLOWED
    assert not JobState.RUNNING.terminal and JobState.RUNNING.active and not JobState.QUEUED.active
