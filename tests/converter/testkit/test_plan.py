"""Tests of converter/testkit/plan.py: which frames each instance holds, and in which order.

TILED_FULL order, sparse / missing / shuffled frames, concatenations, focal planes and optical
paths, each checked frame by frame against the ground truth with independent readers (see
tests/converter/testkit/helpers.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from converter.testkit import SlideSpec, focal_plane_offsets_um, level_geometries, missing_tiles, render_region
from tests.converter.testkit.helpers import (
    SMALL,
    by_name,
    decode,
    expected_tile,
    frames_of,
    sparse_positions,
    tiled_full_position,
    write,
)


def test_tiled_full_levels_geometry_and_pixels(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax="explicit")
    paths = write(spec, out_dir)
    geos = level_geometries(spec)
    assert [(g.downsample, g.width, g.height) for g in geos] == [
        (1, 600, 440), (2, 300, 220), (4, 150, 110), (8, 75, 55)
    ]
    row_mm, col_mm = spec.pixel_spacing_mm
    for geo, path in zip(geos, paths):
        ds = pydicom.dcmread(path)
        assert ds.DimensionOrganizationType == "TILED_FULL"
        assert "PerFrameFunctionalGroupsSequence" not in ds
        assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (geo.width, geo.height)
        assert (ds.Columns, ds.Rows) == (128, 128)
        assert int(ds.NumberOfFrames) == geo.tiles_x * geo.tiles_y
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        expected = [row_mm * geo.downsample, col_mm * geo.downsample]
        assert [float(v) for v in spacing] == pytest.approx(expected)
        assert ds.ImagedVolumeWidth == pytest.approx(600 * col_mm)
        assert ds.ImagedVolumeHeight == pytest.approx(440 * row_mm)
        expected_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if geo.index == 0 else [
            "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        assert list(ds.ImageType) == expected_type
        frame_type = ds.SharedFunctionalGroupsSequence[0].WholeSlideMicroscopyImageFrameTypeSequence
        assert list(frame_type[0].FrameType) == expected_type
        for k, data in enumerate(frames_of(ds)):
            col, row, _, _ = tiled_full_position(k, geo, 1)
            tile = decode(data, ds)
            assert np.array_equal(tile, expected_tile(spec, geo, col, row, None, 0)), (geo.index, k)
        # Edge frames are full size, padded with white beyond the image.
        last = decode(frames_of(ds)[-1], ds)
        assert last.shape == (128, 128, 3)
        assert (last[geo.height - 128 * (geo.tiles_y - 1) :] == 255).all()


def test_sparse_missing_shuffled_frames(out_dir: Path) -> None:
    spec = SlideSpec(
        **SMALL, transfer_syntax="explicit", sparse=True, missing_tiles=0.3, shuffle_frames=True, seed=3
    )
    paths = write(spec, out_dir)
    missing = missing_tiles(spec)
    geo = level_geometries(spec)[0]
    ds = pydicom.dcmread(paths[0])
    assert ds.DimensionOrganizationType == "TILED_SPARSE"
    assert int(ds.NumberOfFrames) == 20 - len(missing) == len(ds.PerFrameFunctionalGroupsSequence)
    positions = sparse_positions(ds)
    cells = [((c - 1) // 128, (r - 1) // 128) for c, r, _, _ in positions]
    assert all((c - 1) % 128 == 0 and (r - 1) % 128 == 0 for c, r, _, _ in positions)  # 1-based
    expected = {(c, r) for r in range(4) for c in range(5)} - missing
    assert set(cells) == expected and len(cells) == len(expected)
    assert cells != sorted(cells, key=lambda cr: (cr[1], cr[0]))  # not raster order
    row_mm, col_mm = spec.pixel_spacing_mm
    for item, (c, r), data in zip(ds.PerFrameFunctionalGroupsSequence, cells, frames_of(ds)):
        pos = item.PlanePositionSlideSequence[0]
        # ImageOrientationSlide [0,-1,0,-1,0,0]: columns run along -Y, rows along -X.
        assert float(pos.XOffsetInSlideCoordinateSystem) == pytest.approx(20.0 - r * 128 * row_mm)
        assert float(pos.YOffsetInSlideCoordinateSystem) == pytest.approx(58.0 - c * 128 * col_mm)
        assert np.array_equal(decode(data, ds), expected_tile(spec, geo, c, r, None, 0))
    # Lower levels are sparse-encoded too, but complete.
    level1 = pydicom.dcmread(paths[1])
    assert level1.DimensionOrganizationType == "TILED_SPARSE"
    assert int(level1.NumberOfFrames) == 6


def test_concatenation_attributes_and_frames(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax="jpegls", concatenation_parts=3)
    paths = by_name(write(spec, out_dir))
    parts = [pydicom.dcmread(paths[f"level-0-part-{k}"]) for k in (1, 2, 3)]
    assert "level-0" not in paths and "level-1" in paths
    assert len({p.ConcatenationUID for p in parts}) == 1
    assert len({p.SOPInstanceUIDOfConcatenationSource for p in parts}) == 1
    source = parts[0].SOPInstanceUIDOfConcatenationSource
    assert source not in {p.SOPInstanceUID for p in parts}
    assert len({p.SOPInstanceUID for p in parts}) == 3
    assert [p.InConcatenationNumber for p in parts] == [1, 2, 3]
    assert {p.InConcatenationTotalNumber for p in parts} == {3}
    assert len({p.InstanceNumber for p in parts}) == 1  # PS3.3 C.7.6.16: same in all parts
    counts = [int(p.NumberOfFrames) for p in parts]
    assert sum(counts) == 20 and counts == [7, 7, 6]
    assert [p.ConcatenationFrameOffsetNumber for p in parts] == [0, 7, 14]
    assert "ConcatenationUID" not in pydicom.dcmread(paths["level-1"])
    geo = level_geometries(spec)[0]
    for part in parts:
        for k, data in enumerate(frames_of(part)):
            col, row, _, _ = tiled_full_position(part.ConcatenationFrameOffsetNumber + k, geo, 1)
            assert np.array_equal(decode(data, part), expected_tile(spec, geo, col, row, None, 0))


def test_sparse_concatenation_splits_per_frame_groups(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, sparse=True, shuffle_frames=True, concatenation_parts=2,
                     transfer_syntax="explicit")
    paths = by_name(write(spec, out_dir))
    parts = [pydicom.dcmread(paths[f"level-0-part-{k}"]) for k in (1, 2)]
    positions = []
    for part in parts:
        assert len(part.PerFrameFunctionalGroupsSequence) == int(part.NumberOfFrames)
        positions += sparse_positions(part)
    assert len(set(positions)) == 20


def test_focal_planes_and_optical_paths_order(out_dir: Path) -> None:
    full = SlideSpec(**SMALL, transfer_syntax="explicit", focal_planes=3, optical_paths=2)
    paths = write(full, out_dir)
    ds = pydicom.dcmread(paths[0])
    geo = level_geometries(full)[0]
    assert ds.TotalPixelMatrixFocalPlanes == 3 and ds.NumberOfOpticalPaths == 2
    assert int(ds.NumberOfFrames) == 20 * 3 * 2
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(0.001)
    assert [i.OpticalPathIdentifier for i in ds.OpticalPathSequence] == ["1", "2"]
    planes = focal_plane_offsets_um(full)
    frames = frames_of(ds)
    for k in (0, 19, 20, 45, 60, 119):  # corners of each plane / path block
        col, row, plane, path = tiled_full_position(k, geo, 3)
        assert np.array_equal(decode(frames[k], ds), expected_tile(full, geo, col, row, planes[plane], path))
    level1 = pydicom.dcmread(paths[1])
    assert level1.TotalPixelMatrixFocalPlanes == 1 and int(level1.NumberOfFrames) == 6 * 2

    sparse = dataclasses.replace(full, sparse=True)
    ds = pydicom.dcmread(write(sparse, out_dir)[0])
    positions = sparse_positions(ds)
    assert {z for _, _, z, _ in positions} == {1.0, 2.0, 3.0}
    assert {p for _, _, _, p in positions} == {"1", "2"}
    for (c, r, z, p), data in list(zip(positions, frames_of(ds)))[::17]:
        truth = render_region(sparse, c - 1, r - 1, 128, 128, z_um=z, optical_path=int(p) - 1)
        assert np.array_equal(decode(data, ds), truth)
