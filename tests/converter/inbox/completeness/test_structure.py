"""Tests of converter/inbox/completeness/structure.py: assess on hand-built facts.

Unit tests pin every rule and every reason text. Property-based tests check the rules against an
independent oracle over randomized series and arrival orders: a proper prefix of the arrivals is
complete exactly when what is missing cannot be seen (a whole level other than the one that ends
the pyramid), the full set is complete in any order, and duplicates and order never matter.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.inbox.completeness import SMALL_LEVEL_PX, InstanceFacts, assess, reaches_small_level
from tests.converter.inbox.completeness.builders import FAST, KINDS, assoc, concat_parts, pyramid, series, vol


def test_full_pyramid_is_complete_with_level_progress() -> None:
    facts = pyramid(6000, 4500) + [assoc("lab", "LABEL"), assoc("ov", "OVERVIEW")]
    c = assess(facts)
    assert c.complete and c.reasons == ()
    assert [(lv.index, lv.width, lv.height) for lv in c.levels][:2] == [(0, 6000, 4500), (1, 3000, 2250)]
    assert c.levels[0].frames_expected == c.levels[0].frames_received == 24 * 18
    assert all(lv.complete and not lv.sparse and lv.instances == 1 for lv in c.levels)


def test_no_volume_level() -> None:
    assert assess([]).reasons == ("no VOLUME level (no instance received)",)
    c = assess([assoc("o", "OVERVIEW"), assoc("l", "LABEL"), assoc("t", "THUMBNAIL")])
    assert not c.complete and c.levels == ()
    assert c.reasons == ("no VOLUME level (only LABEL, OVERVIEW, THUMBNAIL received)",)


def test_level_missing_frames_reason() -> None:
    # The example: level 2 is 6000x4500 in 150 px tiles, 40 x 30 = 1200 frames.
    facts = [vol("a", 24000, 18000), vol("b", 12000, 9000), vol("c", 6000, 4500, 150, frames=870)]
    facts += pyramid(3000, 2250, prefix="low")
    c = assess(facts)
    assert "level 2 (6000x4500): 870 of 1200 frames" in c.reasons
    assert c.levels[2].frames_received == 870 and c.levels[2].frames_expected == 1200
    assert not c.levels[2].complete and c.levels[0].complete


def test_concatenation_missing_parts_reason_and_frames() -> None:
    parts = concat_parts("1.2.3", 2048, 1536, [10, 10, 10, 10, 8])  # 8 x 6 = 48 tiles
    present = [p for p in parts if p.in_concatenation_number not in (2, 4)]
    c = assess(present + pyramid(1024, 768, prefix="low"))
    assert not c.complete
    assert c.reasons == (
        "level 0 (2048x1536): 28 of 48 frames",
        "concatenation 1.2.3 of level 0: parts 2, 4 of 5 missing",
    )
    cp = c.levels[0].concatenations[0]
    assert (cp.uid, cp.parts_total, cp.parts_received, cp.parts_missing) == ("1.2.3", 5, (1, 3, 5), (2, 4))
    one_missing = assess([p for p in parts if p.in_concatenation_number != 3] + pyramid(1024, 768, prefix="low"))
    assert "concatenation 1.2.3 of level 0: part 3 of 5 missing" in one_missing.reasons
    assert assess(parts + pyramid(1024, 768, prefix="low")).complete


def test_concatenation_without_declared_total_reports_gaps() -> None:
    parts = concat_parts("9.9", 2048, 1536, [16, 16, 16], total=None)
    c = assess([parts[0], parts[2]] + pyramid(1024, 768, prefix="low"))
    assert (
        "concatenation 9.9 of level 0: part 2 missing (parts up to 3 received; InConcatenationTotalNumber not declared)"
        in c.reasons
    )
    assert assess(parts + pyramid(1024, 768, prefix="low")).complete
    # Without a total, a missing *last* part still shows in the TILED_FULL frame count.
    tail = assess(parts[:2] + pyramid(1024, 768, prefix="low"))
    assert tail.reasons == ("level 0 (2048x1536): 32 of 48 frames",)


def test_concatenation_frames_counted_from_offsets() -> None:
    parts = concat_parts("7.7", 2048, 1536, [20, 20, 8])
    # A part re-sent under a new SOPInstanceUID holds the same frames: it must not fill the gap.
    resent = dataclasses.replace(parts[0], sop_instance_uid="7.7.1-again")
    c = assess([parts[0], resent, parts[2]] + pyramid(1024, 768, prefix="low"))
    assert c.levels[0].frames_received == 28 and c.levels[0].instances == 2
    assert "concatenation 7.7 of level 0: part 2 of 3 missing" in c.reasons
    # Frames beyond the level (a bad offset) do not count.
    beyond = dataclasses.replace(parts[2], concatenation_frame_offset=45)
    c = assess([parts[0], parts[1], beyond] + pyramid(1024, 768, prefix="low"))
    assert c.levels[0].frames_received == 43 and not c.complete


def test_concatenation_with_offsets_left_at_zero_still_completes() -> None:
    parts = [dataclasses.replace(p, concatenation_frame_offset=0) for p in concat_parts("0.0", 2048, 1536, [16, 16, 16])]
    assert assess(parts + pyramid(1024, 768, prefix="low")).complete
    c = assess(parts[:2] + pyramid(1024, 768, prefix="low"))
    assert c.reasons == ("level 0 (2048x1536): 32 of 48 frames", "concatenation 0.0 of level 0: part 3 of 3 missing")


def test_duplicate_sop_instance_uids_count_once() -> None:
    half = vol("p", 2048, 1536, frames=24, optical_paths=2)  # 48 tiles x 2 paths = 96 expected
    c = assess([half, half, half] + pyramid(1024, 768, prefix="low"))
    assert c.levels[0].frames_received == 24 and c.levels[0].instances == 1
    assert c.reasons == ("level 0 (2048x1536): 24 of 96 frames",)


def test_paths_and_planes_as_separate_instances_add_up() -> None:
    # Each instance declares 2 paths x 3 planes but holds one path: 48 x 3 frames.
    per_path = [vol(f"path{p}", 2048, 1536, frames=48 * 3, focal_planes=3, optical_paths=2) for p in range(2)]
    low = pyramid(1024, 768, prefix="low")
    assert assess(per_path + low).complete
    c = assess(per_path[:1] + low)
    assert c.reasons == ("level 0 (2048x1536): 144 of 288 frames",)
    # One instance per focal plane.
    per_plane = [vol(f"z{z}", 2048, 1536, frames=48, focal_planes=3) for z in range(3)]
    assert assess(per_plane + low).complete
    assert assess(per_plane[:2] + low).reasons == ("level 0 (2048x1536): 96 of 144 frames",)
    # The level sent twice under new UIDs counts at most the expected frames.
    twice = [vol("copy1", 2048, 1536), vol("copy2", 2048, 1536)]
    assert assess(twice + low).levels[0].frames_received == 48


def test_sparse_levels_count_declared_frames() -> None:
    sparse = vol("s", 2048, 1536, frames=17, dimension_organization="TILED_SPARSE", has_positions=True)
    c = assess([sparse] + pyramid(1024, 768, prefix="low"))
    assert c.complete
    assert c.levels[0].sparse and c.levels[0].frames_expected == c.levels[0].frames_received == 17
    # No DimensionOrganizationType but explicit positions: declared frames too.
    implicit = dataclasses.replace(sparse, dimension_organization=None)
    assert assess([implicit] + pyramid(1024, 768, prefix="low")).complete
    # No DimensionOrganizationType, no positions: TILED_FULL, so 17 of 48 frames.
    full = dataclasses.replace(sparse, dimension_organization=None, has_positions=False)
    assert assess([full] + pyramid(1024, 768, prefix="low")).reasons == ("level 0 (2048x1536): 17 of 48 frames",)


def test_sparse_concatenation_missing_part_has_unknown_expected_frames() -> None:
    parts = concat_parts("5.5", 2048, 1536, [5, 6, 7], dimension_organization="TILED_SPARSE", has_positions=True)
    low = pyramid(1024, 768, prefix="low")
    c = assess([parts[0], parts[2]] + low)
    assert c.reasons == ("concatenation 5.5 of level 0: part 2 of 3 missing",)
    assert c.levels[0].frames_received == 12 and c.levels[0].frames_expected is None
    full = assess(parts + low)
    assert full.complete and full.levels[0].frames_expected == 18


def test_levels_grouped_by_size_largest_first() -> None:
    facts = list(reversed(pyramid(3000, 2000, prefix="x")))
    c = assess(facts)
    sizes = [(lv.width, lv.height) for lv in c.levels]
    assert sizes == sorted(sizes, key=lambda s: -s[0] * s[1])
    assert [lv.index for lv in c.levels] == list(range(len(sizes)))


@pytest.mark.parametrize(
    ("w", "h", "tile", "small"),
    [
        (1024, 700, 256, True),  # longer side <= 1024 px
        (700, 1024, 256, True),
        (1025, 700, 256, False),
        (2000, 1500, 2048, True),  # fits one (large) tile
        (2049, 1500, 2048, False),
        (12000, 9000, 256, False),
    ],
)
def test_small_level_rule(w: int, h: int, tile: int, small: bool) -> None:
    level = vol("a", w, h, tile)
    assert reaches_small_level([level]) is small
    c = assess([level])
    assert c.complete is small
    if not small:
        assert c.reasons == (
            f"smallest level {w}x{h} px: the pyramid does not reach a small level"
            f" (one tile, or at most {SMALL_LEVEL_PX} px on the longer side)",
        )


def test_small_level_threshold_is_configurable() -> None:
    assert not assess([vol("a", 1500, 1000)]).complete
    assert assess([vol("a", 1500, 1000)], small_level_px=2000).complete


def test_missing_whole_upper_level_is_not_detectable() -> None:
    """Documented limit: without level 0, the rest is a complete smaller pyramid."""
    facts = pyramid(6000, 4500)
    assert assess(facts[1:]).complete
    # Without the smallest levels, the pyramid does not reach a small level.
    assert not assess(facts[:2]).complete


# --------------------------------------------------------------------------------------------
# Property-based tests
# --------------------------------------------------------------------------------------------


def _small(size: tuple[int, int], members: list[InstanceFacts]) -> bool:
    """Oracle for the small-level rule, written independently of the module."""
    return max(size) <= SMALL_LEVEL_PX or any(size[0] <= m.tile_width and size[1] <= m.tile_height for m in members)


def detectably_incomplete(everything: list[InstanceFacts], received: list[InstanceFacts]) -> bool:
    """What a correct tracker must notice about a subset of a complete series.

    Missing VOLUME instances are visible when no VOLUME arrived at all, when another instance of
    their level arrived (the level's frames or concatenation parts fall short), or when the whole
    smallest level is missing and the smallest received level is not small. A missing whole
    level above that cannot be seen.
    """
    got = {f.sop_instance_uid for f in received}
    missing = [f for f in everything if f.is_volume and f.sop_instance_uid not in got]
    if not missing:
        return False
    by_size: dict[tuple[int, int], list[InstanceFacts]] = {}
    for f in received:
        if f.is_volume:
            by_size.setdefault((f.image_width, f.image_height), []).append(f)
    if not by_size:
        return True
    if any((m.image_width, m.image_height) in by_size for m in missing):
        return True
    smallest = min(by_size, key=lambda s: s[0] * s[1])
    return not _small(smallest, by_size[smallest])


@FAST
@given(data=st.data(), kind=KINDS)
def test_prop_prefix_of_any_arrival_order(data: st.DataObject, kind: str) -> None:
    everything = data.draw(series(kind))
    order = data.draw(st.permutations(everything))
    cut = data.draw(st.integers(0, len(order) - 1))
    prefix = order[:cut]
    c = assess(prefix)
    if detectably_incomplete(everything, prefix):
        assert not c.complete, (prefix, c)
        assert c.reasons
    else:
        # (Only associated images, or whole non-final levels, are missing.)
        assert c.complete, (prefix, c)
    # Required parts specifically: dropping one VOLUME instance from a level that keeps others
    # is always seen, whatever else arrived.
    volumes = [f for f in everything if f.is_volume]
    victim = data.draw(st.sampled_from(volumes))
    same_level = [f for f in volumes if (f.image_width, f.image_height) == (victim.image_width, victim.image_height)]
    if len(same_level) > 1:
        assert not assess([f for f in order if f is not victim]).complete


@FAST
@given(data=st.data(), kind=KINDS)
def test_prop_full_set_in_any_order_is_complete(data: st.DataObject, kind: str) -> None:
    everything = data.draw(series(kind))
    order = data.draw(st.permutations(everything))
    c = assess(order)
    assert c.complete and c.reasons == (), c
    assert all(lv.complete for lv in c.levels)
    # Associated images are optional.
    assert assess([f for f in order if f.is_volume]).complete


@FAST
@given(data=st.data(), kind=KINDS)
def test_prop_order_and_duplicates_do_not_matter(data: st.DataObject, kind: str) -> None:
    everything = data.draw(series(kind))
    subset = data.draw(st.lists(st.sampled_from(everything), unique_by=lambda f: f.sop_instance_uid))
    dups = data.draw(st.lists(st.sampled_from(subset), max_size=6)) if subset else []
    shuffled = data.draw(st.permutations(subset + dups))
    assert assess(shuffled) == assess(subset)
