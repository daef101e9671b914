"""Handoff: the leader's batches, taken by its reader only where they continue its position."""

from __future__ import annotations

from relay.core.handoff import HANDOFF_BATCHES, HANDOFF_ROWS, READ_LOG, WAIT, Handoff


def batch(first: int, last: int) -> list[int]:
    """A batch's rows, here just their positions."""
    return list(range(first, last + 1))


def test_defaults_are_four_batches_and_a_read_of_rows() -> None:
    """The bounds are the named constants: 4 batches, 1,000 rows (what one log read returns)."""
    handoff: Handoff[int] = Handoff()
    assert (4, 1000) == (HANDOFF_BATCHES, HANDOFF_ROWS) == (handoff.max_batches, handoff.max_rows)


def test_batches_that_continue_the_position_are_taken_in_order_then_wait() -> None:
    """Each batch starting at last_pos + 1 is returned whole, in the order offered; then WAIT."""
    handoff: Handoff[int] = Handoff()
    assert handoff.offer(11, batch(11, 13))
    assert handoff.offer(14, batch(14, 14))
    assert batch(11, 13) == handoff.take(10)
    assert batch(14, 14) == handoff.take(13)
    assert WAIT == handoff.take(14)
    assert 0 == len(handoff)


def test_a_batch_already_read_is_skipped_and_one_partly_read_is_cut() -> None:
    """Positions the reader read from the log are never returned twice."""
    handoff: Handoff[int] = Handoff()
    handoff.offer(11, batch(11, 13))
    handoff.offer(14, batch(14, 17))
    handoff.offer(18, batch(18, 19))
    assert batch(16, 17) == handoff.take(15)
    assert batch(18, 19) == handoff.take(17)
    handoff.offer(20, batch(20, 21))
    assert WAIT == handoff.take(25)
    assert 0 == len(handoff)


def test_a_gap_sends_the_reader_to_the_log_and_forgets_what_is_held() -> None:
    """A batch starting past last_pos + 1 (something between was not handed): READ_LOG, once;
    what followed it is in the log too and is dropped; later batches are taken again."""
    handoff: Handoff[int] = Handoff()
    handoff.offer(12, batch(12, 13))
    handoff.offer(14, batch(14, 15))
    assert READ_LOG == handoff.take(10)
    assert 0 == len(handoff)
    assert WAIT == handoff.take(15)
    handoff.offer(16, batch(16, 16))
    assert batch(16, 16) == handoff.take(15)


def test_before_the_reader_has_a_position_it_reads_the_log() -> None:
    """No position yet (never connected): READ_LOG, and nothing is kept."""
    handoff: Handoff[int] = Handoff()
    handoff.offer(1, batch(1, 2))
    assert READ_LOG == handoff.take(None)
    assert 0 == len(handoff)


def test_past_the_batch_bound_everything_is_dropped_and_the_reader_reads_the_log() -> None:
    """The fifth batch waiting is refused: all five are dropped (counted) and the next take says
    READ_LOG once; offers are held again after it."""
    handoff: Handoff[int] = Handoff(max_batches=4, max_rows=1000)
    for first in range(1, 5):
        assert handoff.offer(first, [first])
    assert not handoff.offer(5, [5])
    assert (0, 5) == (len(handoff), handoff.dropped)
    assert handoff.offer(6, [6])  # offered after the drop: held, but behind the log read
    assert READ_LOG == handoff.take(0)
    assert WAIT == handoff.take(6)
    assert handoff.offer(7, [7])
    assert [7] == handoff.take(6)


def test_past_the_row_bound_the_batch_is_dropped_and_the_reader_reads_the_log() -> None:
    """Rows held are bounded too: a batch that would pass max_rows drops everything held; a
    batch larger than the bound is never held."""
    handoff: Handoff[int] = Handoff(max_batches=4, max_rows=10)
    assert handoff.offer(1, batch(1, 6))
    assert not handoff.offer(7, batch(7, 11))
    assert (0, 2) == (len(handoff), handoff.dropped)
    assert READ_LOG == handoff.take(0)
    assert not handoff.offer(12, batch(12, 22))
    assert READ_LOG == handoff.take(11)
    assert handoff.offer(23, batch(23, 32))
    assert batch(23, 32) == handoff.take(22)


def test_clear_forgets_batches_and_a_pending_read() -> None:
    """What the reader does when its connection comes up: it reads the log from there anyway."""
    handoff: Handoff[int] = Handoff(max_batches=1)
    handoff.offer(1, [1])
    handoff.offer(2, [2])
    handoff.clear()
    assert WAIT == handoff.take(2)
    handoff.offer(3, [3])
    handoff.clear()
    assert WAIT == handoff.take(2)


def test_an_empty_offer_holds_nothing() -> None:
    """The sequencer hands only batches that moved rows; an empty one changes nothing."""
    handoff: Handoff[int] = Handoff(max_batches=1)
    assert handoff.offer(5, [])
    assert (0, 0) == (len(handoff), handoff.dropped)
