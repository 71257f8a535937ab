"""Tests of the series-completeness rules (converter/completeness.py).

Unit tests pin every rule and every reason text, on facts built by hand and on real instances
written by the synthetic generator. Property-based tests check the rules against an independent
oracle over randomized series and arrival orders: a proper prefix of the arrivals is complete
exactly when what is missing cannot be seen (a whole level other than the one that ends the
pyramid), the full set is complete in any order, duplicates and order never matter, and the
decision never converts an incomplete series as complete nor waits forever.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter.inbox.completeness import (
    CONVERT,
    CONVERT_INCOMPLETE,
    SMALL_LEVEL_PX,
    WAIT,
    Completeness,
    Decision,
    InstanceFacts,
    SeriesActivity,
    assess,
    decide,
    reaches_small_level,
)
from converter.source.instance import read_instance
from converter.testkit import SlideSpec, missing_tiles, write_series

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def vol(
    uid: str,
    w: int,
    h: int,
    tile: int = 256,
    frames: int | None = None,
    **kw: object,
) -> InstanceFacts:
    """A VOLUME instance; by default TILED_FULL with all its frames."""
    planes, paths = kw.get("focal_planes", 1), kw.get("optical_paths", 1)
    if frames is None:
        frames = math.ceil(w / tile) * math.ceil(h / tile) * planes * paths  # type: ignore[operator]
    kw.setdefault("dimension_organization", "TILED_FULL")
    return InstanceFacts(uid, "VOLUME", w, h, tile, tile, frames, **kw)  # type: ignore[arg-type]


def assoc(uid: str, flavor: str, w: int = 400, h: int = 300) -> InstanceFacts:
    return InstanceFacts(uid, flavor, w, h, w, h, 1, "TILED_FULL")


def pyramid(w: int, h: int, tile: int = 256, prefix: str = "lv") -> list[InstanceFacts]:
    """Single-instance TILED_FULL levels halving until one fits a tile."""
    out, ds = [], 1
    while True:
        lw, lh = math.ceil(w / ds), math.ceil(h / ds)
        out.append(vol(f"{prefix}{len(out)}", lw, lh, tile))
        if lw <= tile and lh <= tile:
            return out
        ds *= 2


def concat_parts(uid: str, w: int, h: int, sizes: list[int], tile: int = 256, total: int | None = -1, **kw: object) -> list[InstanceFacts]:
    """Parts of one concatenation holding consecutive frame ranges of the given sizes."""
    parts, offset = [], 0
    n_total = len(sizes) if total == -1 else total
    for k, n in enumerate(sizes):
        parts.append(
            vol(
                f"{uid}.{k + 1}", w, h, tile, n,
                concatenation_uid=uid, in_concatenation_number=k + 1, in_concatenation_total=n_total,
                concatenation_frame_offset=offset, **kw,
            )
        )
        offset += n
    return parts


# --------------------------------------------------------------------------------------------
# InstanceFacts
# --------------------------------------------------------------------------------------------


def test_facts_properties_and_sparse_rule() -> None:
    f = vol("a", 1000, 700, 256, focal_planes=3, optical_paths=2)
    assert (f.tiles_across, f.tiles_down) == (4, 3)
    assert f.full_frames == 4 * 3 * 3 * 2
    assert not f.is_sparse
    assert vol("b", 10, 10, dimension_organization=None).is_sparse is False  # None = TILED_FULL
    assert vol("c", 10, 10, dimension_organization=None, has_positions=True).is_sparse  # positions declare frames
    assert vol("d", 10, 10, dimension_organization="TILED_SPARSE").is_sparse
    assert vol("e", 10, 10, dimension_organization="TILED_FULL", has_positions=True).is_sparse
    assert InstanceFacts("f", "volume", 10, 10, 10, 10, 1).is_volume  # case-insensitive


@pytest.mark.parametrize(
    "change",
    [
        dict(sop_instance_uid=""),
        dict(image_width=0),
        dict(tile_height=0),
        dict(number_of_frames=0),
        dict(focal_planes=0),
        dict(optical_paths=0),
        dict(in_concatenation_number=0),
        dict(in_concatenation_total=0),
        dict(concatenation_frame_offset=-1),
    ],
)
def test_facts_reject_impossible_headers(change: dict) -> None:
    with pytest.raises(ValueError, match="must be|empty"):
        dataclasses.replace(vol("a", 100, 100), **change)


# --------------------------------------------------------------------------------------------
# assess: unit tests on hand-built facts
# --------------------------------------------------------------------------------------------


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
# assess on real instances written by the synthetic generator
# --------------------------------------------------------------------------------------------

SMALL = dict(width=600, height=440, tile_size=128)  # level 0: 5 x 4 tiles


def _facts(folder: Path, spec: SlideSpec) -> dict[str, InstanceFacts]:
    paths = write_series(spec, folder, workers=2)
    return {p.stem: InstanceFacts.from_instance(read_instance(p)) for p in paths}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SlideSpec, dict[str, InstanceFacts]]]:
    specs = {
        "full": SlideSpec(**SMALL, label=True, overview=True, thumbnail=True),
        "sparse": SlideSpec(**SMALL, sparse=True, missing_tiles=0.3, shuffle_frames=True),
        "concatenated": SlideSpec(**SMALL, concatenation_parts=3),
        "planes-paths": SlideSpec(**SMALL, focal_planes=3, optical_paths=2),
        "single-level": SlideSpec(width=1200, height=1100, tile_size=128, downsamples=(1,)),
    }
    root = tmp_path_factory.mktemp("completeness")
    return {name: (spec, _facts(root / name, spec)) for name, spec in specs.items()}


def test_real_full_series(written) -> None:
    spec, facts = written["full"]
    c = assess(facts.values())
    assert c.complete and c.reasons == ()
    assert [(lv.width, lv.height, lv.frames_expected) for lv in c.levels] == [
        (600, 440, 20),
        (300, 220, 6),
        (150, 110, 2),
        (75, 55, 1),
    ]
    assert {f.flavor for f in facts.values()} == {"VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL"}


def test_real_sparse_with_missing_tiles_is_complete(written) -> None:
    spec, facts = written["sparse"]
    f0 = facts["level-0"]
    assert f0.is_sparse and f0.has_positions and f0.dimension_organization == "TILED_SPARSE"
    c = assess(facts.values())
    assert c.complete
    declared = 20 - len(missing_tiles(spec))
    assert declared < 20
    assert c.levels[0].sparse and c.levels[0].frames_expected == c.levels[0].frames_received == declared


def test_real_concatenation_with_a_missing_part(written) -> None:
    spec, facts = written["concatenated"]
    assert assess(facts.values()).complete
    part2 = facts["level-0-part-2"]
    rest = [f for name, f in facts.items() if name != "level-0-part-2"]
    c = assess(rest)
    assert not c.complete
    assert f"concatenation {part2.concatenation_uid} of level 0: part 2 of 3 missing" in c.reasons
    assert f"level 0 (600x440): {20 - part2.number_of_frames} of 20 frames" in c.reasons
    assert c.levels[0].concatenations[0].parts_received == (1, 3)


def test_real_focal_planes_and_optical_paths(written) -> None:
    spec, facts = written["planes-paths"]
    f0 = facts["level-0"]
    assert (f0.focal_planes, f0.optical_paths) == (3, 2)
    c = assess(facts.values())
    assert c.complete
    assert c.levels[0].frames_expected == 20 * 3 * 2 == c.levels[0].frames_received
    assert c.levels[1].frames_expected == 6 * 1 * 2  # lower levels: the in-focus plane only


def test_real_label_and_overview_only(written) -> None:
    spec, facts = written["full"]
    c = assess([facts["label"], facts["overview"]])
    assert not c.complete
    assert c.reasons == ("no VOLUME level (only LABEL, OVERVIEW received)",)


def test_real_single_large_level_does_not_reach_a_small_level(written) -> None:
    spec, facts = written["single-level"]
    c = assess(facts.values())
    assert not c.complete
    assert c.levels[0].complete  # all its frames are there ...
    assert c.reasons[0].startswith("smallest level 1200x1100 px: the pyramid does not reach a small level")


# --------------------------------------------------------------------------------------------
# decide: unit tests
# --------------------------------------------------------------------------------------------

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


def _split(draw, n: int, k: int) -> list[int]:
    """n frames into k non-empty consecutive parts."""
    k = max(1, min(k, n))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True))) if k > 1 else []
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


@st.composite
def series(draw, kind: str | None = None) -> list[InstanceFacts]:
    """A complete series as InstanceFacts: a pyramid halving until one tile, each level sent as
    one instance, a concatenation, or one instance per optical path / focal plane (TILED_FULL);
    sparse levels declare a random number of frames; optional associated images."""
    kind = kind or draw(st.sampled_from(["full", "sparse", "concatenated"]))
    tile = draw(st.sampled_from([64, 128, 256]))
    w, h = draw(st.integers(1, 8 * tile)), draw(st.integers(1, 8 * tile))
    planes, paths = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    sizes, ds = [], 1
    while True:
        lw, lh = math.ceil(w / ds), math.ceil(h / ds)
        sizes.append((lw, lh))
        if lw <= tile and lh <= tile:
            break
        ds *= 2
    sparse_dim = dict(dimension_organization="TILED_SPARSE", has_positions=True)
    facts: list[InstanceFacts] = []
    for li, (lw, lh) in enumerate(sizes):
        lp = planes if li == 0 else 1
        geometry = dict(focal_planes=lp, optical_paths=paths)
        full_n = math.ceil(lw / tile) * math.ceil(lh / tile) * lp * paths
        name = f"s{li}"
        if kind == "sparse":
            declared = draw(st.integers(1, full_n))
            k = draw(st.integers(1, min(4, declared)))
            if k == 1:
                facts.append(vol(name, lw, lh, tile, declared, **geometry, **sparse_dim))
            else:
                facts += concat_parts(f"c{li}", lw, lh, _split(draw, declared, k), tile, **geometry, **sparse_dim)
            continue
        modes = ["single", "concat"] + (["per-path"] if paths > 1 else []) + (["per-plane"] if lp > 1 else [])
        if kind == "concatenated" and li == 0 and full_n > 1:
            mode = "concat"
        else:
            mode = draw(st.sampled_from(modes))
        if mode == "single":
            facts.append(vol(name, lw, lh, tile, **geometry))
        elif mode == "concat":
            k = draw(st.integers(min(2 if kind == "concatenated" else 1, full_n), min(5, full_n)))
            facts += concat_parts(f"c{li}", lw, lh, _split(draw, full_n, k), tile, **geometry)
        else:
            k = paths if mode == "per-path" else lp
            facts += [vol(f"{name}.{j}", lw, lh, tile, full_n // k, **geometry) for j in range(k)]
    for flavor in ("LABEL", "OVERVIEW", "THUMBNAIL"):
        if draw(st.booleans()):
            facts.append(assoc(f"a-{flavor}", flavor))
    return facts


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


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = st.sampled_from(["full", "sparse", "concatenated"])


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
