"""Series model: levels by size (not FrameOfReferenceUID), concatenations, associated images, notes."""

from converter.source.discover import discover
from converter.source.instance import read_instance
from converter.source.series import build_series
from converter.testkit import SlideSpec, write_series


def _series(tmp_path, spec, drop=()):
    files = write_series(spec, tmp_path / "in")
    for f in files:
        if f.name in drop:
            f.unlink()
    (uid, instances), = discover([tmp_path / "in"]).series.items()
    return build_series(instances)


def test_levels_with_own_frame_of_reference_are_all_kept(tmp_path):
    series = _series(tmp_path, SlideSpec(width=1500, height=1100, frame_of_reference_per_level=True))
    assert [lv.width for lv in series.levels] == [1500, 750, 375, 188]
    assert any("FrameOfReferenceUID" in n for n in series.notes)


def test_concatenation_parts_form_one_level(tmp_path):
    series = _series(tmp_path, SlideSpec(width=1500, height=1100, concatenation_parts=3))
    base = series.base
    assert len(base.instances) == 3
    assert [i.in_concatenation_number for i in base.instances] == [1, 2, 3]
    assert base.tile_index.missing == 0 and len(base.tile_index.frames) == base.tile_index.expected


def test_missing_concatenation_part_is_noted(tmp_path):
    files = write_series(SlideSpec(width=1500, height=1100, concatenation_parts=3), tmp_path / "in")
    part = next(f for f in files if read_instance(f).in_concatenation_number == 2)
    part.unlink()
    (uid, instances), = discover([tmp_path / "in"]).series.items()
    series = build_series(instances)
    assert any("only 2 of 3 concatenation parts" in n for n in series.notes)
    assert series.base.tile_index.missing > 0


def test_associated_images_and_inferred_roles(tmp_path):
    series = _series(tmp_path, SlideSpec(width=1500, height=1100, label=True, overview=True, thumbnail=True))
    assert sorted(series.associated) == ["label", "overview", "thumbnail"]
    series = _series(tmp_path / "b", SlideSpec(width=1500, height=1100, label=True, overview=True, image_type=False))
    assert sorted(series.associated) == ["label", "overview"]
    assert any("no ImageType" in n for n in series.notes)


def test_sparse_shuffled_frames_land_on_their_positions(tmp_path):
    series = _series(tmp_path, SlideSpec(width=1500, height=1100, sparse=True, shuffle_frames=True))
    base = series.base
    inst = base.first
    for (col, row), ref in base.tile_index.frames.items():
        pos = inst.frame_positions[ref.frame]
        assert (pos.column // inst.tile_width, pos.row // inst.tile_height) == (col, row)
    # Shuffled: frame order is not raster order.
    order = [base.tile_index.frames[(c, r)].frame for r in range(base.tile_index.tiles_down) for c in range(base.tile_index.tiles_across)]
    assert order != sorted(order)
