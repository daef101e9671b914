"""PollPacer: the sequencer's wait before its next look at the inbox."""

from __future__ import annotations

import pytest

from relay.core.pacing import DEFAULT_IDLE, DEFAULT_WINDOW, PollPacer


def test_defaults_are_a_millisecond_window_and_a_twenty_millisecond_idle_bound() -> None:
    """The defaults are the named module constants: 1 ms after a batch, at most 20 ms idle."""
    pacer = PollPacer()
    assert (0.001, 0.02) == (DEFAULT_WINDOW, DEFAULT_IDLE) == (pacer.window, pacer.idle)


def test_a_full_batch_is_followed_at_once_and_a_partial_one_after_the_window() -> None:
    """A batch that hit its limit: look again now; one that moved rows: after the window."""
    pacer = PollPacer(0.001, 0.016)
    assert 0.0 == pacer.after(1000, 1000)
    assert 0.001 == pacer.after(7, 1000)
    assert 0.001 == pacer.after(1, 1000)


def test_empty_looks_double_the_wait_up_to_the_idle_bound_and_rows_bring_it_back() -> None:
    """Each empty look doubles the wait, never past idle; the next rows reset it to the window."""
    pacer = PollPacer(0.001, 0.016)
    assert 0.016 == pacer.after(0, 1000)  # idle from the start
    assert 0.001 == pacer.after(3, 1000)
    assert [0.002, 0.004, 0.008, 0.016, 0.016] == [pacer.after(0, 1000) for _ in range(5)]
    assert 0.001 == pacer.after(1, 1000)


@pytest.mark.parametrize(("window", "idle"), [(0.0, 0.02), (0.03, 0.02), (-1.0, 0.02)])
def test_a_window_outside_zero_to_idle_is_refused(window: float, idle: float) -> None:
    """window must be above 0 and at most idle."""
    with pytest.raises(ValueError, match="0 < window <= idle"):
        PollPacer(window, idle)
