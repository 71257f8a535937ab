"""Tests of converter/inbox/completeness/structure.py on real instances written by the synthetic generator.

The facts come from files (InstanceFacts.from_instance on read_instance), so these tests also pin
what the rules see of each structural variant the generator writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.inbox.completeness import InstanceFacts, assess
from converter.source.instance import read_instance
from converter.testkit import SlideSpec, missing_tiles, write_series

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
