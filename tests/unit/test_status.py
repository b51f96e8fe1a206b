"""router.status: what a destination's C-STORE status means for delivery."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.status import Outcome, Status, classify, describe


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0x0000, Outcome.SUCCESS),
        (0xB000, Outcome.WARNING),
        (0xB006, Outcome.WARNING),
        (0xB007, Outcome.WARNING),
        (0x0001, Outcome.WARNING),
        (0xB123, Outcome.WARNING),
        (0xA700, Outcome.RETRY),
        (0xA7FF, Outcome.RETRY),
        (0xA701, Outcome.RETRY),
        (0x0213, Outcome.RETRY),
        (0xA900, Outcome.FAILED),
        (0xA9FF, Outcome.FAILED),
        (0xC000, Outcome.FAILED),
        (0xC211, Outcome.FAILED),
        (0xCFFF, Outcome.FAILED),
        (0x0122, Outcome.FAILED),
        (0x0124, Outcome.FAILED),
        (0x0110, Outcome.FAILED),
        (0x0210, Outcome.FAILED),
        (0xA800, Outcome.FAILED),
        (0xA600, Outcome.FAILED),
        (0x0212, Outcome.FAILED),
        (0x0214, Outcome.FAILED),
    ],
)
def test_classify(code: int, outcome: Outcome) -> None:
    assert classify(code) is outcome


def test_outcome_values_are_metric_labels() -> None:
    assert [o.value for o in Outcome] == ["success", "warning", "retry", "failed"]
    assert f"{Outcome.RETRY}" == "retry"


@given(st.integers(min_value=0, max_value=0xFF))
def test_whole_a7xx_range_is_retry(low: int) -> None:
    assert classify(0xA700 | low) is Outcome.RETRY


@given(st.integers(min_value=0, max_value=0xFFF))
def test_whole_bxxx_range_is_warning(low: int) -> None:
    assert classify(0xB000 | low) is Outcome.WARNING


@given(st.integers(min_value=0, max_value=0xFFFF))
def test_only_zero_is_success(code: int) -> None:
    assert (classify(code) is Outcome.SUCCESS) == (code == 0)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x0000, "0x0000 SUCCESS"),
        (0xA700, "0xA700 OUT_OF_RESOURCES"),
        (0xB007, "0xB007 DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING"),
        (0x0122, "0x0122 SOP_CLASS_NOT_SUPPORTED"),
        (0x0213, "0x0213 RESOURCE_LIMITATION"),
        (0xC211, "0xC211 UNKNOWN"),
        (0xA7FF, "0xA7FF UNKNOWN"),
    ],
)
def test_describe(code: int, text: str) -> None:
    assert describe(code) == text


def test_every_named_status_is_described_by_its_name() -> None:
    for status in Status:
        assert describe(int(status)) == f"0x{int(status):04X} {status.name}"
