"""Tests of converter/inbox/completeness/decision.py: decide, and SeriesActivity's validation.

Unit tests pin every branch and its wake-up time. A property-based test checks, over randomized
series and activities, that the decision never converts an incomplete series as complete nor waits
forever.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.inbox.completeness import (
    CONVERT,
    CONVERT_INCOMPLETE,
    WAIT,
    Completeness,
    Decision,
    SeriesActivity,
    assess,
    decide,
)
from tests.converter.inbox.completeness.builders import FAST, KINDS, series

COMPLETE = Completeness(True, (), ())
INCOMPLETE = Completeness(False, ("level 0 (2048x1536): 28 of 48 frames", "concatenation 1.2.3 of level 0: parts 2, 4 of 5 missing"), ())


def test_decide_converted_and_nothing_new_waits_for_an_event() -> None:
    for c in (COMPLETE, INCOMPLETE):
        d = decide(c, SeriesActivity(100.0, 0, converted_at=100.0), now=10_000.0)
        assert (d.action, d.next_check) == (WAIT, None)


def test_decide_complete_converts_after_settle() -> None:
    act = SeriesActivity(100.0, 0)
    d = decide(COMPLETE, act, now=101.0)
    assert (d.action, d.next_check) == (WAIT, 102.0)
    d = decide(COMPLETE, act, now=102.0)
    assert (d.action, d.next_check) == (CONVERT, None)
    assert decide(COMPLETE, act, now=100.5, settle=0.5).action == CONVERT


def test_decide_complete_waits_for_open_association_with_quiet_safety_net() -> None:
    act = SeriesActivity(100.0, 2)
    d = decide(COMPLETE, act, now=110.0)
    assert (d.action, d.next_check) == (WAIT, 160.0)
    assert "2 associations still open" in d.reasons[0]
    d = decide(COMPLETE, act, now=160.0)
    assert d.action == CONVERT and "nothing arrived for 60 s" in d.reasons[0]
    assert decide(COMPLETE, act, now=130.0, quiet=30.0).action == CONVERT


def test_decide_incomplete_waits_quiet_then_converts_with_reasons() -> None:
    act = SeriesActivity(100.0, 0)
    d = decide(INCOMPLETE, act, now=159.9)
    assert (d.action, d.next_check) == (WAIT, 160.0)
    assert d.reasons[1:] == INCOMPLETE.reasons
    d = decide(INCOMPLETE, act, now=160.0)
    assert d.action == CONVERT_INCOMPLETE and d.next_check is None
    assert d.reasons[:2] == INCOMPLETE.reasons
    assert "nothing arrived for 60 s" in d.reasons
    # Configurable quiet; an open association does not hold an incomplete series either.
    d = decide(INCOMPLETE, SeriesActivity(100.0, 1), now=110.0, quiet=10.0)
    assert d.action == CONVERT_INCOMPLETE and "1 association still open" in d.reasons


def test_decide_reopened_series_follows_the_same_rules() -> None:
    act = SeriesActivity(last_arrival=500.0, open_associations=0, converted_at=200.0)
    d = decide(COMPLETE, act, now=501.0)
    assert (d.action, d.next_check) == (WAIT, 502.0)
    d = decide(COMPLETE, act, now=502.0)
    assert d.action == CONVERT and any("re-opened" in r for r in d.reasons)
    assert decide(INCOMPLETE, act, now=559.0).action == WAIT
    assert decide(INCOMPLETE, act, now=560.0).action == CONVERT_INCOMPLETE


def test_decide_caps_settle_at_quiet_and_rejects_bad_values() -> None:
    act = SeriesActivity(0.0, 0)
    d = decide(COMPLETE, act, now=1.0, settle=100.0, quiet=5.0)
    assert (d.action, d.next_check) == (WAIT, 5.0)
    assert decide(COMPLETE, act, now=5.0, settle=100.0, quiet=5.0).action == CONVERT
    with pytest.raises(ValueError):
        decide(COMPLETE, act, now=1.0, settle=-1.0)
    with pytest.raises(ValueError):
        decide(COMPLETE, act, now=1.0, quiet=float("nan"))
    with pytest.raises(ValueError):
        SeriesActivity(float("nan"), 0)
    with pytest.raises(ValueError):
        SeriesActivity(0.0, -1)
    with pytest.raises(ValueError):
        Decision("later", (), None)


# --------------------------------------------------------------------------------------------
# Property-based tests
# --------------------------------------------------------------------------------------------


@st.composite
def activities(draw) -> tuple[SeriesActivity, float, float, float]:
    times = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
    last = draw(times)
    converted = draw(st.one_of(st.none(), times, st.just(last)))
    act = SeriesActivity(last, draw(st.integers(0, 3)), converted)
    quiet = draw(st.floats(0, 3600, allow_nan=False))
    settle = draw(st.floats(0, 30, allow_nan=False))
    now = draw(st.one_of(st.floats(last - 10, last + 2 * quiet + 10, allow_nan=False), st.just(last + settle), st.just(last + quiet)))
    return act, now, settle, quiet


@FAST
@given(data=st.data(), kind=KINDS, timing=activities())
def test_prop_decide_is_safe_and_never_waits_forever(data: st.DataObject, kind: str, timing) -> None:
    act, now, settle, quiet = timing
    everything = data.draw(series(kind))
    received = data.draw(st.lists(st.sampled_from(everything), unique_by=lambda f: f.sop_instance_uid))
    c = assess(received)
    d = decide(c, act, now, settle, quiet)
    if not c.complete:
        assert d.action != CONVERT
    else:
        assert d.action != CONVERT_INCOMPLETE
    if d.action == CONVERT_INCOMPLETE:
        assert d.reasons[: len(c.reasons)] == c.reasons and c.reasons
    up_to_date = act.converted_at is not None and act.converted_at >= act.last_arrival
    if up_to_date:
        assert (d.action, d.next_check) == (WAIT, None)
        return
    # Never "wait" forever: a wake-up is always scheduled, and the quiet time always ends it.
    if d.action == WAIT:
        assert d.next_check is not None and d.next_check > now
        assert decide(c, act, d.next_check, settle, quiet).action in (CONVERT, CONVERT_INCOMPLETE)
    assert decide(c, act, act.last_arrival + quiet, settle, quiet).action in (CONVERT, CONVERT_INCOMPLETE)
