"""Tests of the completion signals and sender profiles (decision.py, profiles.py).

Unit tests pin the three new paths: a storage commitment covering every instance converts at once,
the end of the association converts a factor-4 pyramid (smallest level above 1024 px) after the
settle time, and an association that ended with a level incomplete keeps the series waiting for the
quiet period. Property tests check over randomized series, subsets and activities that neither
signal ever converts a series with a level missing frames or parts before the quiet period, and that
every decision names its rule.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.inbox.completeness import (CONVERT, CONVERT_INCOMPLETE, RULES, WAIT, SenderProfile, SeriesActivity, assess,
                                          decide, profile_for)
from tests.converter.inbox.completeness.builders import FAST, KINDS, concat_parts, series, vol


def factor4() -> list:
    """Aperio-style: 25,000 / 6,250 / 1,562 px levels, 256 px tiles; the smallest is above 1024 px."""
    return [vol("l0", 25000, 20000), vol("l1", 6250, 5000), vol("l2", 1562, 1250)]


def test_factor4_pyramid_is_not_structurally_complete_but_its_levels_are():
    c = assess(factor4())
    assert not c.complete and c.received_levels_complete
    assert any("does not reach a small level" in r for r in c.reasons)


def test_association_end_converts_a_factor4_pyramid_after_settle():
    c = assess(factor4())
    ended = SeriesActivity(100.0, 0, associations_ended=1)
    d = decide(c, ended, now=101.0, settle=2.0, quiet=60.0)
    assert (d.action, d.rule, d.next_check) == (WAIT, "association-end", 102.0)
    assert "settle" in d.waiting_for
    d = decide(c, ended, now=102.0, settle=2.0, quiet=60.0)
    assert (d.action, d.rule) == (CONVERT, "association-end")
    # The same series while its association is still open waits (for the association, a signal, or the quiet period).
    d = decide(c, SeriesActivity(100.0, 1, associations_ended=1), now=150.0, settle=2.0, quiet=60.0)
    assert d.action == WAIT and "association to end" in d.waiting_for
    # A profile without the rule: the quiet period decides.
    d = decide(c, ended, now=150.0, settle=2.0, quiet=60.0, association_end_completes=False)
    assert d.action == WAIT and d.next_check == 160.0
    assert decide(c, ended, now=160.0, quiet=60.0, association_end_completes=False).action == CONVERT_INCOMPLETE


def test_association_end_with_an_incomplete_level_waits_for_the_quiet_period():
    facts = [vol("l0", 25000, 20000, frames=5), vol("l1", 6250, 5000), vol("l2", 1562, 1250)]
    c = assess(facts)
    ended = SeriesActivity(100.0, 0, associations_ended=1)
    d = decide(c, ended, now=150.0, settle=2.0, quiet=60.0)
    assert (d.action, d.next_check) == (WAIT, 160.0) and "missing frames" in d.waiting_for
    assert decide(c, ended, now=160.0, settle=2.0, quiet=60.0).action == CONVERT_INCOMPLETE


def test_commitment_converts_at_once_but_not_after_a_later_arrival():
    c = assess(factor4())
    d = decide(c, SeriesActivity(100.0, 1, committed_at=100.5), now=100.6, settle=2.0, quiet=60.0)
    assert (d.action, d.rule) == (CONVERT, "commitment")
    d = decide(c, SeriesActivity(101.0, 1, committed_at=100.5), now=101.1, settle=2.0, quiet=60.0)
    assert d.action == WAIT  # an instance arrived after the request: the signal no longer covers the series
    missing = assess([vol("l0", 25000, 20000), *concat_parts("c1", 6250, 5000, [200, 100, 200])[:2]])
    assert decide(missing, SeriesActivity(100.0, 0, committed_at=101.0), now=101.0).action == WAIT


def test_profiles_by_calling_ae_title():
    scanner = SenderProfile("SCANNER1", settle=0.5, quiet=30.0, small_level_px=2048, association_end_completes=False)
    default = SenderProfile()
    assert profile_for({"SCANNER1"}, {"SCANNER1": scanner}, default) is scanner
    assert profile_for({"PACS"}, {"SCANNER1": scanner}, default) is default
    assert profile_for({"ZED", "SCANNER1"}, {"SCANNER1": scanner, "ZED": default}, default) is scanner  # sorted, not arrival order
    assert assess(factor4(), small_level_px=scanner.small_level_px).complete
    for bad in (dict(settle=-1.0), dict(quiet=math.inf), dict(small_level_px=0)):
        with pytest.raises(ValueError):
            SenderProfile("X", **bad)
    with pytest.raises(ValueError):
        SeriesActivity(0.0, 0, associations_ended=-1)
    with pytest.raises(ValueError):
        SeriesActivity(0.0, 0, committed_at=math.nan)


@FAST
@given(st.data(), KINDS)
def test_signals_never_convert_a_level_with_missing_frames_before_the_quiet_period(data, kind):
    facts = data.draw(series(kind))
    keep = data.draw(st.lists(st.booleans(), min_size=len(facts), max_size=len(facts)))
    subset = [f for f, k in zip(facts, keep) if k] or facts[:1]
    c = assess(subset)
    last = 1000.0
    activity = SeriesActivity(last, data.draw(st.integers(0, 2)), associations_ended=data.draw(st.integers(0, 3)),
                              committed_at=data.draw(st.one_of(st.none(), st.floats(900.0, 1100.0))))
    quiet = data.draw(st.floats(1.0, 120.0))
    settle = data.draw(st.floats(0.0, 10.0))
    now = data.draw(st.floats(last, last + 200.0))
    d = decide(c, activity, now, settle, quiet, data.draw(st.booleans()))
    assert d.rule in RULES
    if d.action == CONVERT:
        assert c.received_levels_complete, (d, c.reasons)
    if not c.received_levels_complete and now < last + quiet:
        assert d.action == WAIT and d.next_check is not None and d.next_check <= last + quiet
    if d.action == WAIT:
        assert d.waiting_for
        assert d.next_check is None or d.next_check > now


@FAST
@given(series(), st.floats(0.0, 10.0), st.floats(10.0, 120.0))
def test_a_complete_series_with_a_signal_is_converted_within_settle(facts, settle, quiet):
    c = assess(facts)
    assert c.received_levels_complete
    ended = SeriesActivity(1000.0, 0, associations_ended=1)
    d = decide(c, ended, 1000.0 + settle, settle, quiet)
    assert d.action == CONVERT and d.rule in ("structure", "association-end")
    d = decide(c, SeriesActivity(1000.0, 3, committed_at=1000.0), 1000.0, settle, quiet)
    assert (d.action, d.rule) == (CONVERT, "commitment")
