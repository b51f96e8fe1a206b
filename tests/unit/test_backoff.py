"""router.deliver.backoff_delay: exponential backoff with full jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import router.deliver
from router.deliver import backoff_delay


@pytest.fixture
def at_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the jitter return the top of its range, exposing the ceiling exactly."""
    monkeypatch.setattr(router.deliver.random, "uniform", lambda low, high: high)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (8, 256.0), (9, 512.0), (10, 600.0)],
)
def test_ceiling_doubles_until_max(at_ceiling: None, attempt: int, ceiling: float) -> None:
    assert backoff_delay(attempt, 2.0, 600.0) == ceiling


def test_lower_bound_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router.deliver.random, "uniform", lambda low, high: low)
    assert backoff_delay(5, 2.0, 600.0) == 0.0


def test_max_below_initial_caps_first_attempt(at_ceiling: None) -> None:
    assert backoff_delay(1, 30.0, 10.0) == 10.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_sampled_delays_fill_the_range(attempt: int) -> None:
    rng_state = random.getstate()
    random.seed(attempt)
    try:
        samples = [backoff_delay(attempt, 1.0, 100.0) for _ in range(2000)]
    finally:
        random.setstate(rng_state)
    ceiling = min(100.0, 2.0 ** (attempt - 1))
    assert all(0.0 <= s <= ceiling for s in samples)
    assert max(samples) > 0.95 * ceiling  # reaches near the ceiling
    assert min(samples) < 0.05 * ceiling  # full jitter: near zero too
    assert len(set(samples)) > 1900  # jittered, not a fixed delay


def test_delay_grows_with_attempt() -> None:
    random.seed(1234)
    maxima = [max(backoff_delay(n, 1.0, 1000.0) for _ in range(500)) for n in range(1, 9)]
    assert maxima == sorted(maxima)
    assert maxima[-1] > 50 * maxima[0]


@given(
    attempt=st.integers(min_value=0, max_value=60),
    initial=st.floats(min_value=0.001, max_value=100),
    maximum=st.floats(min_value=0.001, max_value=10_000),
)
def test_never_exceeds_max_or_goes_negative(attempt: int, initial: float, maximum: float) -> None:
    delay = backoff_delay(attempt, initial, maximum)
    assert 0.0 <= delay <= maximum
    assert delay <= initial * 2 ** max(0, attempt - 1)


def test_very_large_attempt_is_capped_not_crashing(at_ceiling: None) -> None:
    assert backoff_delay(1100, 2.0, 600.0) == 600.0
