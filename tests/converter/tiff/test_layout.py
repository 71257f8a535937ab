import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.errors import SeriesError
from converter.tiff.layout import SourceLevelFacts, plan_layout


def facts(w, h, tile=256, blocker=None):
    return SourceLevelFacts(w, h, tile, tile, blocker, w * h // 10)


def test_full_pyramid_is_copied():
    plan = plan_layout([facts(4096, 3072), facts(2048, 1536), facts(1024, 768), facts(512, 384), facts(256, 192)])
    assert [lv.action for lv in plan.levels] == ["copy"] * 5
    assert [lv.source for lv in plan.levels] == [0, 1, 2, 3, 4]
    assert (plan.tile_width, plan.tile_height) == (256, 256)


def test_missing_levels_are_generated_between_factor_4_levels():
    plan = plan_layout([facts(8192, 8192, 512), facts(2048, 2048, 512), facts(512, 512, 512)])
    assert [(lv.width, lv.action, lv.source) for lv in plan.levels] == [
        (8192, "copy", 0),
        (4096, "generate", None),
        (2048, "copy", 1),
        (1024, "generate", None),
        (512, "copy", 2),
    ]
    assert [[lv.index for lv in c] for c in plan.chains()] == [[0, 1], [2, 3], [4]]
    assert plan.tile_width == 512


def test_reencode_mode_uses_tile_size_option():
    plan = plan_layout([facts(1000, 1000, 512)], mode="reencode", tile_size=128)
    assert plan.tile_width == 128
    assert [lv.action for lv in plan.levels] == ["reencode", "generate", "generate", "generate"]
    assert [lv.width for lv in plan.levels] == [1000, 500, 250, 125]


def test_blocked_level_is_reencoded_in_auto_and_refused_in_copy():
    levels = [facts(2000, 2000, 500, "500x500 frames are not a multiple of 16 px")]
    plan = plan_layout(levels, mode="auto", tile_size=256)
    assert plan.levels[0].action == "reencode"
    assert "multiple of 16" in plan.levels[0].reason
    with pytest.raises(SeriesError, match="multiple of 16"):
        plan_layout(levels, mode="copy")


def test_level_with_other_tile_size_is_reencoded_for_one_pyramid_tile_size():
    plan = plan_layout([facts(4096, 4096, 512), facts(2048, 2048, 256)])
    assert plan.levels[1].action == "reencode"
    assert "differ" in plan.levels[1].reason


def test_unusable_and_tiny_source_levels_are_reported():
    plan = plan_layout([facts(4000, 4000), facts(1333, 1333), facts(2, 2)])
    text = " ".join(plan.unused)
    assert "source level 1" in text and "power of two" in text
    assert "source level 2" in text and "not needed" in text


def test_bigtiff_when_large():
    small = plan_layout([facts(10000, 10000)], mode="reencode")
    big = plan_layout([facts(100000, 100000)], mode="reencode")
    assert not small.bigtiff and big.bigtiff


@given(st.integers(1, 20000), st.integers(1, 20000), st.sampled_from([128, 256, 512]))
def test_pyramid_halves_down_to_one_tile(w, h, tile):
    plan = plan_layout([facts(w, h, tile)], tile_size=tile)
    levels = plan.levels
    last = levels[-1]
    assert last.width <= tile and last.height <= tile
    for above, below in zip(levels, levels[1:]):
        assert (below.width, below.height) == (-(-above.width // 2), -(-above.height // 2))
        assert above.width > tile or above.height > tile
