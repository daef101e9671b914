"""PollPacer: the sequencer's wait before its next look at the inbox."""

from __future__ import annotations

import pytest

from relay.core.pacing import BUSY_FACTOR, BUSY_ROWS, DEFAULT_IDLE, DEFAULT_WINDOW, PollPacer


def test_defaults_are_a_millisecond_window_and_a_twenty_millisecond_idle_bound() -> None:
    """The defaults are the named module constants: 1 ms after a batch, at most 20 ms idle."""
    pacer = PollPacer()
    assert (0.001, 0.02) == (DEFAULT_WINDOW, DEFAULT_IDLE) == (pacer.window, pacer.idle)


def test_a_full_batch_is_followed_at_once_and_a_partial_one_after_the_window() -> None:
    """A batch that hit its limit: look again now; one of up to BUSY_ROWS rows: after the window."""
    pacer = PollPacer(0.001, 0.016)
    assert (4, 5) == (BUSY_ROWS, BUSY_FACTOR)
    assert 0.0 == pacer.after(1000, 1000)
    assert 0.001 == pacer.after(4, 1000)
    assert 0.001 == pacer.after(1, 1000)


def test_under_load_the_window_stretches_with_the_rows_up_to_five_windows_or_idle() -> None:
    """Past BUSY_ROWS rows a look waits in proportion: 8 rows two windows, never past five
    windows, nor past idle; a quieter look brings the window back."""
    pacer = PollPacer(0.001, 0.016)
    assert [0.002, 0.003, 0.005, 0.005, 0.001] == [
        pacer.after(n, 1000) for n in (8, 12, 20, 999, 3)
    ]
    assert 0.003 == PollPacer(0.002, 0.003).after(999, 1000)  # idle bounds it too


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
