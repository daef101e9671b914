"""Backoff: capped exponential delays with full jitter; a long up period resets the attempts."""

from __future__ import annotations

import random

import pytest

from relay.core.backoff import (
    DEFAULT_CAP,
    DEFAULT_INITIAL,
    DEFAULT_MULTIPLIER,
    DEFAULT_RESET_AFTER,
    Backoff,
)


def test_defaults() -> None:
    """The defaults are the named module constants."""
    b = Backoff()
    assert (0.5, 30.0, 2.0, 60.0) == (
        DEFAULT_INITIAL,
        DEFAULT_CAP,
        DEFAULT_MULTIPLIER,
        DEFAULT_RESET_AFTER,
    )
    assert (b.initial, b.cap, b.multiplier, b.reset_after) == (
        DEFAULT_INITIAL,
        DEFAULT_CAP,
        DEFAULT_MULTIPLIER,
        DEFAULT_RESET_AFTER,
    )
    assert 0 == b.attempts


def test_every_delay_within_its_ceiling_for_50_attempts() -> None:
    """Attempt n's delay lies in [0, min(cap, initial * multiplier**n)]."""
    b = Backoff(rng=random.Random(1234))
    for n in range(50):
        ceiling = min(30.0, 0.5 * 2.0**n)
        assert ceiling == b.ceiling()
        delay = b.next_delay()
        assert 0.0 <= delay <= ceiling, (n, delay)
        assert n + 1 == b.attempts


def test_delays_are_full_jitter_from_the_injected_rng() -> None:
    """Each delay is rng.uniform(0, ceiling): reproducible with a seed."""
    b, reference = Backoff(rng=random.Random(7)), random.Random(7)
    expected = [reference.uniform(0.0, min(30.0, 0.5 * 2.0**n)) for n in range(20)]
    assert expected == [b.next_delay() for _ in range(20)]


def test_cap_is_reached_and_respected() -> None:
    """Past the cap, delays spread over [0, cap] and never exceed it."""
    b = Backoff(initial=1.0, cap=8.0, rng=random.Random(99))
    delays = [b.next_delay() for _ in range(500)]
    capped = delays[3:]  # 1, 2, 4, then 8 for ever
    assert max(capped) <= 8.0
    assert max(capped) > 7.0  # the jitter does use the whole range
    assert 8.0 == b.ceiling()


def test_many_attempts_do_not_overflow() -> None:
    """Thousands of attempts keep the ceiling at the cap instead of overflowing a float."""
    b = Backoff(rng=random.Random(0))
    for _ in range(3000):
        b.next_delay()
    assert 30.0 == b.ceiling()
    assert 0.0 <= b.next_delay() <= 30.0


def test_long_up_period_resets_attempts() -> None:
    """A failure reset_after seconds or more after the success starts again from zero."""
    b = Backoff(rng=random.Random(1))
    for _ in range(6):
        b.next_delay()
    b.succeeded(now=100.0)
    b.failed(now=160.0)
    assert 0 == b.attempts
    assert b.next_delay() <= 0.5


def test_flapping_connection_keeps_backing_off() -> None:
    """Up for less than reset_after: the attempts keep counting."""
    b = Backoff(rng=random.Random(1))
    now = 0.0
    for n in range(1, 8):
        b.failed(now)
        b.next_delay()
        now += 1.0
        b.succeeded(now)
        now += 59.9
        assert n == b.attempts
    b.failed(now)
    assert 7 == b.attempts


def test_failures_while_down_keep_backing_off_after_a_reset() -> None:
    """After one reset, further failures without a success do not reset again."""
    b = Backoff(rng=random.Random(1))
    for _ in range(4):
        b.next_delay()
    b.succeeded(now=0.0)
    b.failed(now=100.0)
    assert 0 == b.attempts
    for n in range(1, 4):
        b.next_delay()
        b.failed(now=100.0 + 10 * n)  # the reconnect attempts fail
        assert n == b.attempts


def test_repeated_successes_do_not_move_the_up_start() -> None:
    """Reporting success again while up does not postpone the reset."""
    b = Backoff(rng=random.Random(1))
    b.next_delay()
    b.next_delay()
    b.succeeded(now=0.0)
    for t in range(1, 60):
        b.succeeded(now=float(t))
    b.failed(now=60.0)
    assert 0 == b.attempts


@pytest.mark.parametrize(
    ("initial", "cap", "multiplier", "reset_after"),
    [(0.0, 30.0, 2.0, 60.0), (0.5, 0.1, 2.0, 60.0), (0.5, 30.0, 0.5, 60.0), (0.5, 30.0, 2.0, -1.0)],
)
def test_rejects_nonsense_parameters(
    initial: float, cap: float, multiplier: float, reset_after: float
) -> None:
    """Parameters that cannot back off are refused at construction."""
    with pytest.raises(ValueError):
        Backoff(initial=initial, cap=cap, multiplier=multiplier, reset_after=reset_after)
