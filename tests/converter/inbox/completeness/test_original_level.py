"""The ORIGINAL level rule of converter/inbox/completeness/structure.py: a series whose VOLUME
instances all say DERIVED (ImageType value 1, PS3.3 C.8.12.4.1.1) waits for its level 0, whatever
the arrival order; instances that do not declare it never hold a series back."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from converter.inbox.completeness import SeriesActivity, assess, decide
from tests.converter.inbox.completeness.builders import FAST, pyramid


def _declared(facts):
    """The same pyramid with ImageType value 1 declared: level 0 ORIGINAL, the others DERIVED."""
    return [dataclasses.replace(f, pixel_origin="ORIGINAL" if i == 0 else "DERIVED") for i, f in enumerate(facts)]


def test_without_the_original_level_the_series_is_incomplete() -> None:
    facts = _declared(pyramid(6000, 4500))
    verdict = assess(facts[1:])  # old rules: a complete, smaller pyramid (see test_structure)
    assert not verdict.complete
    assert any("no ORIGINAL level yet" in r and "3000x2250" in r for r in verdict.reasons)
    assert assess(facts).complete
    # Incomplete: a sender that sends level 0 last is given the quiet period, not the settle time.
    d = decide(verdict, SeriesActivity(last_arrival=100.0, open_associations=0), now=103.0)
    assert d.action == "wait" and d.next_check == 160.0


def test_undeclared_origin_never_holds_a_series_back() -> None:
    facts = pyramid(6000, 4500)
    assert assess(facts[1:]).complete  # nothing says these are DERIVED: the documented limit stays
    mixed = _declared(facts)[1:]
    mixed[0] = dataclasses.replace(mixed[0], pixel_origin=None)
    assert assess(mixed).complete


@FAST
@given(order=st.permutations(range(6)), cut=st.integers(0, 6))
def test_prop_never_complete_before_the_original_level_arrives(order: list[int], cut: int) -> None:
    facts = _declared(pyramid(6000, 4500))  # 6 levels
    arrived = [facts[i] for i in order[:cut]]
    verdict = assess(arrived)
    if verdict.complete:
        assert any(f.pixel_origin == "ORIGINAL" for f in arrived)
    if cut == len(facts):
        assert verdict.complete
