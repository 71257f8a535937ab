"""Tests of the synthetic DICOM WSI generator (converter/synthetic.py).

The generator is the ground truth for the converter's tests, so these tests check it against
independent readers (pydicom's encapsulation parser, imagecodecs decoders, the raw bitstream
markers, and wsidicom/openslide when installed) rather than against its own helpers.
"""

from __future__ import annotations

import dataclasses
import struct
import time
import tracemalloc
import warnings
from io import BytesIO
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import (
    encapsulate,
    encapsulate_extended,
    generate_frames,
    get_frame,
    parse_basic_offsets,
    parse_fragments,
)
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    SegmentationStorage,
    VLWholeSlideMicroscopyImageStorage,
)

from converter.testkit.synthetic import (
    MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE,
    SlideSpec,
    available_transfer_syntaxes,
    focal_plane_offsets_um,
    focus_depth_um,
    level_geometries,
    missing_tiles,
    render_label,
    render_region,
    series_uids,
    srgb_icc_profile,
    write_non_wsi,
    write_series,
)

# Small slide: level 0 is 5 x 4 tiles of 128 px with partial edge tiles.
SMALL = dict(width=600, height=440, tile_size=128)
LOSSLESS = ["jpeg2000-lossless", "jpegls", "htj2k", "explicit", "implicit"]

_written: dict[SlideSpec, list[Path]] = {}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def write(spec: SlideSpec, out_dir: Path) -> list[Path]:
    """write_series once per spec per module (several tests inspect the same series)."""
    if spec not in _written:
        folder = out_dir / f"s{len(_written)}"
        _written[spec] = write_series(spec, folder)
    return _written[spec]


def by_name(paths: list[Path]) -> dict[str, Path]:
    return {p.stem: p for p in paths}


def frames_of(ds: pydicom.Dataset) -> list[bytes]:
    """Frames via pydicom's own parsers (BOT / EOT / fragment scanning), not ours."""
    n = int(ds.NumberOfFrames)
    if ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel
        return [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]
    eot = None
    if "ExtendedOffsetTable" in ds:
        eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return list(generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=eot))


def decode(data: bytes, ds: pydicom.Dataset) -> np.ndarray:
    ts = ds.file_meta.TransferSyntaxUID
    if ts == JPEGBaseline8Bit:
        return imagecodecs.jpeg8_decode(data)
    if ts in (JPEG2000, JPEG2000Lossless):
        return imagecodecs.jpeg2k_decode(data)
    if ts == JPEGLSLossless:
        return imagecodecs.jpegls_decode(data)
    if ts == HTJ2KLossless:
        return imagecodecs.htj2k_decode(data)
    shape = (ds.Rows, ds.Columns) + ((3,) if ds.SamplesPerPixel == 3 else ())
    return np.frombuffer(data, np.uint8).reshape(shape)


def tiled_full_position(k: int, geo, n_planes: int) -> tuple[int, int, int, int]:
    """(col, row, plane, path) of TILED_FULL frame k: column fastest, then row, plane, path."""
    per_plane = geo.tiles_x * geo.tiles_y
    return (
        k % geo.tiles_x,
        (k // geo.tiles_x) % geo.tiles_y,
        (k // per_plane) % n_planes,
        k // (per_plane * n_planes),
    )


def expected_tile(spec: SlideSpec, geo, col: int, row: int, z: float, path: int) -> np.ndarray:
    t = spec.tile_size
    return render_region(spec, col * t, row * t, t, t, geo.downsample, z_um=z, optical_path=path)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every JPEG segment up to SOS, parsed by hand."""
    assert data[:2] == b"\xff\xd8"
    out, i = [], 2
    while True:
        assert data[i] == 0xFF
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        out.append((marker, data[i + 4 : i + 2 + length]))
        if marker == 0xDA:
            return out
        i += 2 + length


def j2k_segments(data: bytes) -> dict[int, bytes]:
    """Main-header marker segments of a raw J2K codestream (up to the first SOT)."""
    assert data[:2] == b"\xff\x4f", "must be a raw codestream (SOC), not a JP2 file"
    out, i = {}, 2
    while True:
        marker = struct.unpack(">H", data[i : i + 2])[0]
        if marker == 0xFF90:
            return out
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        out[marker] = data[i + 4 : i + 2 + length]
        i += 2 + length


# ----------------------------------------------------------------------------------------------
# Ground truth rendering
# ----------------------------------------------------------------------------------------------


def test_render_region_shape_determinism_and_edges() -> None:
    spec = SlideSpec()
    a = render_region(spec, 100, 50, 256, 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_region(spec, 100, 50, 256, 256))
    # Tile-independent: a sub-window of a larger render is identical (no seams between tiles).
    big = render_region(spec, 0, 0, 600, 400)
    assert np.array_equal(big[53:309, 61:317], render_region(spec, 61, 53, 256, 256)[:347, :539])
    # Outside the image is white; inside never is (glass is ~245).
    corner = render_region(spec, spec.width - 10, spec.height - 10, 20, 20)
    assert (corner[10:] == 255).all() and (corner[:, 10:] == 255).all()
    assert (corner[:10, :10] < 255).any()
    # Lower level: extent is ceil(width / downsample).
    lvl = render_region(SlideSpec(width=1001, height=999), 0, 0, 300, 300, downsample=4)
    assert (lvl[:, 251:] == 255).all() and (lvl[:250, :250] < 255).any()


def test_render_looks_like_h_and_e() -> None:
    fractions = []
    for seed in range(4):
        a = render_region(SlideSpec(seed=seed), 0, 0, 256, 192, downsample=8).astype(int)
        fractions.append((a.mean(-1) < 238).mean())
    assert all(0.35 <= f <= 0.65 for f in fractions), fractions
    assert len(set(np.round(fractions, 3))) == 4  # layout differs by seed

    a = render_region(SlideSpec(), 0, 0, 2048, 1536).astype(int)
    tissue = a.mean(-1) < 238
    background = ~tissue
    assert abs(a[background].mean() - 245) < 2.5
    pink = a[tissue]
    assert np.median(pink[:, 0] - pink[:, 1]) > 40  # eosin: red well above green
    nuclei = (a[..., 2] > a[..., 0]) & (a[..., 0] < 170)  # hematoxylin purple
    assert 0.03 < nuclei[tissue].mean() < 0.3
    assert nuclei[background].mean() < 0.001


def test_lower_levels_match_area_average_of_level0() -> None:
    spec = SlideSpec()
    level0 = render_region(spec, 0, 0, 2048, 1536).astype(float)
    for ds in (2, 4, 16):
        h, w = 1536 // ds, 2048 // ds
        mean = level0.reshape(h, ds, w, ds, 3).mean((1, 3))
        level = render_region(spec, 0, 0, w, h, ds).astype(float)
        assert np.abs(mean - level).mean() < 5, ds
        assert np.abs((mean - level).mean()) < 1.5, ds  # no colour bias between levels


def test_render_tile_is_fast() -> None:
    spec = SlideSpec(width=24000, height=18000)
    render_region(spec, 0, 0, 256, 256)
    start = time.perf_counter()
    for i in range(20):
        render_region(spec, 256 * i, 256 * i, 256, 256)
    assert (time.perf_counter() - start) / 20 < 0.015


def test_focal_planes_and_optical_paths_render_differently() -> None:
    spec = SlideSpec(focal_planes=3, optical_paths=2)
    assert focal_plane_offsets_um(spec) == (1.0, 2.0, 3.0)
    assert focus_depth_um(spec) == 2.0
    z = [render_region(spec, 512, 768, 256, 256, z_um=v) for v in (1.0, 2.0, 3.0)]
    assert np.array_equal(z[1], render_region(spec, 512, 768, 256, 256))
    assert mae(z[0], z[1]) > 0.5 and mae(z[2], z[1]) > 0.5 and mae(z[0], z[2]) > 0.5
    assert mae(render_region(spec, 512, 768, 256, 256, optical_path=1), z[1]) > 20


def test_grayscale_render_is_luma_of_colour() -> None:
    colour = render_region(SlideSpec(), 300, 300, 64, 64).astype(float)
    gray = render_region(SlideSpec(samples_per_pixel=1), 300, 300, 64, 64)
    assert gray.shape == (64, 64)
    luma = colour @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray - luma).max() <= 1.01


def test_missing_tiles_render_white_at_every_level() -> None:
    spec = SlideSpec(**SMALL, sparse=True, missing_tiles=0.3, seed=5)
    missing = missing_tiles(spec)
    assert len(missing) == round(0.3 * 20)
    assert missing == missing_tiles(dataclasses.replace(spec))  # deterministic
    assert missing != missing_tiles(dataclasses.replace(spec, seed=6))
    c, r = sorted(missing)[0]
    assert (render_region(spec, c * 128, r * 128, 128, 128) == 255).all()
    assert (render_region(spec, c * 64 + 8, r * 64 + 8, 48, 48, downsample=2) == 255).all()


# ----------------------------------------------------------------------------------------------
# Series structure
# ----------------------------------------------------------------------------------------------


def test_write_series_is_byte_identical(tmp_path: Path) -> None:
    spec = SlideSpec(
        **SMALL, sparse=True, missing_tiles=0.2, shuffle_frames=True, label=True,
        overview=True, thumbnail=True, concatenation_parts=2,
    )
    first = write_series(spec, tmp_path / "a", workers=1)
    second = write_series(spec, tmp_path / "b", workers=3)  # thread count must not matter
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert not list((tmp_path / "a").glob("*.tmp"))
    other = write_series(dataclasses.replace(spec, seed=1), tmp_path / "c")
    ds_a, ds_c = pydicom.dcmread(first[0]), pydicom.dcmread(other[0])
    assert ds_a.SOPInstanceUID != ds_c.SOPInstanceUID
    assert ds_a.PixelData != ds_c.PixelData


def test_series_uids_and_common_attributes(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, label=True, overview=True, thumbnail=True)
    paths = write(spec, out_dir)
    study, series = series_uids(spec)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert [p.name for p in paths] == [
        "level-0.dcm", "level-1.dcm", "level-2.dcm", "level-3.dcm",
        "label.dcm", "overview.dcm", "thumbnail.dcm",
    ]
    assert {d.StudyInstanceUID for d in datasets} == {study}
    assert {d.SeriesInstanceUID for d in datasets} == {series}
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    assert len({d.InstanceNumber for d in datasets}) == len(datasets)
    assert len({d.FrameOfReferenceUID for d in datasets}) == 1
    for d in datasets:
        assert d.SOPClassUID == VLWholeSlideMicroscopyImageStorage
        assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert d.Modality == "SM" and d.PatientID == "SYN-0"
        assert str(d.PatientName) == "Synthetic^Slide"
        assert d.Manufacturer == "wsi-node synthetic"
        assert d.ContainerIdentifier == "SYN-0-SLIDE"
        assert d.OpticalPathSequence[0].OpticalPathIdentifier == "1"
        assert d.OpticalPathSequence[0].ICCProfile == srgb_icc_profile()
        assert d.LossyImageCompression == "01" and float(d.LossyImageCompressionRatio) > 2
        assert d["PixelData"].VR == "OB" and d["PixelData"].is_undefined_length
    # Same seed, other spec: same study (same patient), different series.
    other = series_uids(dataclasses.replace(spec, quality=80))
    assert other[0] == study and other[1] != series


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


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_syntaxes_decode_exactly(out_dir: Path, name: str) -> None:
    if name not in available_transfer_syntaxes():
        pytest.skip(f"imagecodecs cannot encode {name}")
    spec = SlideSpec(**SMALL, transfer_syntax=name)
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    assert ds.LossyImageCompression == "00" and "LossyImageCompressionRatio" not in ds
    geo = level_geometries(spec)[0]
    for k, data in enumerate(frames_of(ds)):
        col, row, _, _ = tiled_full_position(k, geo, 1)
        assert np.array_equal(decode(data, ds), expected_tile(spec, geo, col, row, None, 0))


def test_native_encodings_are_what_the_meta_says(out_dir: Path) -> None:
    implicit = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="implicit"), out_dir)[0])
    explicit = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="explicit"), out_dir)[0])
    assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert implicit.original_encoding == (True, True)
    assert explicit.original_encoding == (False, True)
    assert explicit["PixelData"].VR == "OB"
    assert len(implicit.PixelData) == 20 * 128 * 128 * 3
    # pydicom's native decoder agrees with the ground truth (frame 7 = column 2, row 1).
    from pydicom.pixels import pixel_array

    spec = SlideSpec(**SMALL, transfer_syntax="implicit")
    frame = pixel_array(implicit, index=7)
    assert np.array_equal(frame, render_region(spec, 256, 128, 128, 128))


@pytest.mark.parametrize(
    "name, subsampling, photometric, sampling",
    [
        ("jpeg", "420", "YBR_FULL_422", [0x22, 0x11, 0x11]),
        ("jpeg", "422", "YBR_FULL_422", [0x21, 0x11, 0x11]),
        ("jpeg", "444", "YBR_FULL", [0x11, 0x11, 0x11]),
        ("jpeg-rgb", "420", "RGB", [0x11, 0x11, 0x11]),
    ],
)
def test_jpeg_bitstream_matches_label(
    out_dir: Path, name: str, subsampling: str, photometric: str, sampling: list[int]
) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax=name, subsampling=subsampling)
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    assert ds.PhotometricInterpretation == photometric
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    frames = frames_of(ds)
    segments = jpeg_segments(frames[0])
    markers = [m for m, _ in segments]
    sof = next(p for m, p in segments if m == 0xC0)  # baseline SOF0 only
    assert not {0xC1, 0xC2, 0xC3} & set(markers)
    assert sof[5] == 3 and [sof[7 + 3 * i] for i in range(3)] == sampling
    if name == "jpeg":
        assert any(m == 0xE0 and p.startswith(b"JFIF\0") for m, p in segments)
        assert 0xEE not in markers
    else:
        adobe = [p for m, p in segments if m == 0xEE]
        assert adobe and adobe[0].startswith(b"Adobe") and adobe[0][11] == 0  # transform 0 = RGB
        assert 0xE0 not in markers
        assert [sof[6 + 3 * i] for i in range(3)] == list(b"RGB")
    # Decoded frames are close to the truth; reading the samples with the wrong colour model
    # is far off, so a converter that swaps YCbCr and RGB cannot pass a tolerance test.
    geo = level_geometries(spec)[0]
    errors, swapped = [], []
    for k, data in enumerate(frames):
        col, row, _, _ = tiled_full_position(k, geo, 1)
        truth = expected_tile(spec, geo, col, row, None, 0)
        errors.append(mae(imagecodecs.jpeg8_decode(data), truth))
        if name == "jpeg":
            raw = imagecodecs.jpeg8_decode(data, outcolorspace="YCBCR")  # YCbCr read as RGB
        else:
            ycc = imagecodecs.jpeg8_decode(data).astype(float)  # RGB read as YCbCr
            y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
            raw = np.stack([y + 1.402 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.772 * cb], -1)
            raw = np.clip(raw, 0, 255)
        swapped.append(mae(raw, truth))
    assert max(errors) < 4.0 and np.mean(errors) < 2.5
    assert min(swapped) > 25


def test_photometric_override_reproduces_wsi2dcm_mislabel(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, photometric="RGB")
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    assert ds.PhotometricInterpretation == "RGB"
    segments = jpeg_segments(frames_of(ds)[0])
    assert any(m == 0xE0 and p.startswith(b"JFIF\0") for m, p in segments)  # still YCbCr
    sof = next(p for m, p in segments if m == 0xC0)
    assert sof[7] == 0x22  # and still 4:2:0
    truthful = pydicom.dcmread(write(SlideSpec(**SMALL), out_dir)[0])
    assert frames_of(ds) == frames_of(truthful)  # only the label differs


def test_jpeg2000_codestreams(out_dir: Path) -> None:
    lossy = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="jpeg2000"), out_dir)[0])
    lossless = pydicom.dcmread(
        write(SlideSpec(**SMALL, transfer_syntax="jpeg2000-lossless"), out_dir)[0]
    )
    assert lossy.file_meta.TransferSyntaxUID == JPEG2000
    assert lossless.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert lossy.PhotometricInterpretation == "YBR_ICT"
    assert lossless.PhotometricInterpretation == "YBR_RCT"
    assert lossy.LossyImageCompression == "01" and lossy.LossyImageCompressionMethod == "ISO_15444_1"
    cod_lossy = j2k_segments(frames_of(lossy)[0])[0xFF52]
    cod_lossless = j2k_segments(frames_of(lossless)[0])[0xFF52]
    # SGcod byte 4: multiple component transform; SPcod byte 9: 0 = 9/7 irreversible, 1 = 5/3
    assert (cod_lossy[4], cod_lossy[9]) == (1, 0)
    assert (cod_lossless[4], cod_lossless[9]) == (1, 1)
    spec = SlideSpec(**SMALL, transfer_syntax="jpeg2000")
    geo = level_geometries(spec)[0]
    for k, data in enumerate(frames_of(lossy)):
        col, row, _, _ = tiled_full_position(k, geo, 1)
        assert mae(imagecodecs.jpeg2k_decode(data), expected_tile(spec, geo, col, row, None, 0)) < 3


def test_htj2k_and_jpegls_streams(out_dir: Path) -> None:
    available = available_transfer_syntaxes()
    if "htj2k" in available:
        ds = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="htj2k"), out_dir)[0])
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.201"
        seg = j2k_segments(frames_of(ds)[0])
        assert 0xFF50 in seg  # CAP marker: Part 15 (high-throughput) codestream
        assert seg[0xFF52][9] == 1 and ds.PhotometricInterpretation == "YBR_RCT"
    if "jpegls" in available:
        ds = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="jpegls"), out_dir)[0])
        data = frames_of(ds)[0]
        assert data[:4] == b"\xff\xd8\xff\xf7"  # SOI then SOF55: no SPIFF header
        sos = next(p for m, p in jpeg_segments(data) if m == 0xDA)
        assert sos[0] == 3 and sos[-3] == 0  # three components, NEAR = 0 (lossless)
        assert ds.PhotometricInterpretation == "RGB"


# ----------------------------------------------------------------------------------------------
# Encapsulation variants
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset_table, fragments", [("basic", 1), ("extended", 1), ("empty", 1), ("basic", 3), ("empty", 3)]
)
def test_offset_table_variants(out_dir: Path, offset_table: str, fragments: int) -> None:
    spec = SlideSpec(**SMALL, offset_table=offset_table, fragments_per_frame=fragments)
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    reference = pydicom.dcmread(write(SlideSpec(**SMALL), out_dir)[0])
    encoded = frames_of(reference)  # basic BOT, one fragment: the frames as encoded
    n = len(encoded)
    buffer = BytesIO(ds.PixelData)
    bot = parse_basic_offsets(buffer)
    nr_fragments, _ = parse_fragments(buffer)
    assert nr_fragments == n * fragments
    assert len(bot) == (n if offset_table == "basic" else 0)
    assert ("ExtendedOffsetTable" in ds) == (offset_table == "extended")
    if offset_table == "extended":
        assert len(ds.ExtendedOffsetTable) == 8 * n == len(ds.ExtendedOffsetTableLengths)
    # Whole-value identity with pydicom's own encapsulation of the same frames.
    if offset_table == "extended":
        pixel_data, offsets, lengths = encapsulate_extended(encoded)
        assert (ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) == (
            pixel_data, offsets, lengths)
    else:
        assert ds.PixelData == encapsulate(
            encoded, fragments_per_frame=fragments, has_bot=offset_table == "basic"
        )
    assert frames_of(ds) == encoded
    eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) if offset_table == "extended" else None
    assert get_frame(ds.PixelData, n - 1, number_of_frames=n, extended_offsets=eot) == encoded[-1]


def test_extended_offset_table_with_fragments_is_rejected() -> None:
    with pytest.raises(ValueError, match="Extended Offset Table"):
        SlideSpec(offset_table="extended", fragments_per_frame=2)


# ----------------------------------------------------------------------------------------------
# Sparse, missing, shuffled, concatenated
# ----------------------------------------------------------------------------------------------


def sparse_positions(ds: pydicom.Dataset) -> list[tuple[int, int, float, str]]:
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        pos = item.PlanePositionSlideSequence[0]
        out.append((
            pos.ColumnPositionInTotalImagePixelMatrix,
            pos.RowPositionInTotalImagePixelMatrix,
            float(pos.ZOffsetInSlideCoordinateSystem),
            item.OpticalPathIdentificationSequence[0].OpticalPathIdentifier,
        ))
    return out


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


# ----------------------------------------------------------------------------------------------
# Variants of attributes, associated images, grayscale
# ----------------------------------------------------------------------------------------------


def test_grayscale_series(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, samples_per_pixel=1, label=True)
    paths = write(spec, out_dir)
    ds = pydicom.dcmread(paths[0])
    assert ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert "PlanarConfiguration" not in ds and "ICCProfile" not in ds.OpticalPathSequence[0]
    assert ds.PresentationLUTShape == "IDENTITY"
    data = frames_of(ds)[0]
    sof = next(p for m, p in jpeg_segments(data) if m == 0xC0)
    assert sof[5] == 1
    tile = decode(data, ds)
    assert tile.ndim == 2 and mae(tile, render_region(spec, 0, 0, 128, 128)) < 3
    lossless = SlideSpec(**SMALL, samples_per_pixel=1, transfer_syntax="jpeg2000-lossless")
    ds = pydicom.dcmread(write(lossless, out_dir)[0])
    assert np.array_equal(decode(frames_of(ds)[6], ds), render_region(lossless, 128, 128, 128, 128))


def test_associated_images(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax="explicit", label=True, overview=True, thumbnail=True)
    paths = by_name(write(spec, out_dir))
    label, overview, thumb = (pydicom.dcmread(paths[n]) for n in ("label", "overview", "thumbnail"))
    assert list(label.ImageType) == ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    assert list(overview.ImageType) == ["ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"]
    assert list(thumb.ImageType) == ["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"]
    assert label.BurnedInAnnotation == "YES" and label.SpecimenLabelInImage == "YES"
    assert pydicom.dcmread(paths["level-0"]).BurnedInAnnotation == "NO"
    for ds in (label, overview, thumb):
        assert int(ds.NumberOfFrames) == 1
        assert (ds.Rows, ds.Columns) == (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns)
    pixels = decode(label.PixelData, label)
    assert np.array_equal(pixels, render_label(spec))
    assert (pixels[:20].mean((0, 1)) == [40, 90, 200]).all()  # blue stripe: a colour label
    assert (pixels < 60).mean() > 0.05  # dark text and barcode
    # Thumbnail covers the whole slide: its spacing times its size is the imaged extent.
    measures = thumb.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = [float(v) for v in measures.PixelSpacing]
    assert thumb.TotalPixelMatrixColumns * spacing[1] == pytest.approx(thumb.ImagedVolumeWidth, rel=0.01)
    assert thumb.TotalPixelMatrixRows * spacing[0] == pytest.approx(thumb.ImagedVolumeHeight, rel=0.01)
    thumb_px = decode(thumb.PixelData, thumb).astype(float)
    level0 = render_region(spec, 0, 0, 600, 440).astype(float)
    assert abs(thumb_px.mean() - level0.mean()) < 2


def test_optional_attributes_can_be_omitted(out_dir: Path) -> None:
    spec = SlideSpec(
        **SMALL, image_type=False, dimension_organization=False, frame_of_reference_per_level=True,
        icc_profile=False,
    )
    datasets = [pydicom.dcmread(p) for p in write(spec, out_dir)]
    for ds in datasets:
        assert "ImageType" not in ds and "DimensionOrganizationType" not in ds
        assert "ICCProfile" not in ds.OpticalPathSequence[0]
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == len(datasets)


def test_icc_profile_is_valid() -> None:
    icc = srgb_icc_profile()
    assert struct.unpack(">I", icc[:4])[0] == len(icc)
    assert icc[36:40] == b"acsp" and icc[12:20] == b"mntrRGB " and icc[20:24] == b"XYZ "
    ImageCms = pytest.importorskip("PIL.ImageCms")
    profile = ImageCms.ImageCmsProfile(BytesIO(icc))
    assert "sRGB" in ImageCms.getProfileDescription(profile)
    srgb = ImageCms.createProfile("sRGB")
    from PIL import Image

    image = Image.fromarray(render_region(SlideSpec(), 300, 300, 32, 32))
    converted = np.asarray(ImageCms.profileToProfile(image, profile, srgb))
    assert mae(converted, np.asarray(image)) < 2  # it really is sRGB


def test_spec_validation() -> None:
    for bad in (
        dict(transfer_syntax="jpeg-xl"),
        dict(missing_tiles=0.2),  # needs sparse
        dict(shuffle_frames=True),
        dict(offset_table="nope"),
        dict(fragments_per_frame=2, transfer_syntax="explicit"),
        dict(downsamples=(2, 4)),
        dict(samples_per_pixel=2),
        dict(width=600, height=440, tile_size=128, concatenation_parts=21),
    ):
        with pytest.raises(ValueError):
            SlideSpec(**bad)


def test_streaming_memory_stays_flat(tmp_path: Path) -> None:
    # 3072 x 3072 native RGB: level 0 alone is 27 MiB of pixels.
    spec = SlideSpec(width=3072, height=3072, tile_size=256, transfer_syntax="explicit")
    tracemalloc.start()
    try:
        paths = write_series(spec, tmp_path, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert paths[0].stat().st_size > 3072 * 3072 * 3
    assert peak < 12 * 2**20, peak


# ----------------------------------------------------------------------------------------------
# Non-WSI instances
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, sop_class, modality",
    [
        ("ct", CTImageStorage, "CT"),
        ("seg", SegmentationStorage, "SEG"),
        ("annotation", MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE, "ANN"),
    ],
)
def test_non_wsi_instances(tmp_path: Path, kind: str, sop_class: str, modality: str) -> None:
    study, series = series_uids(SlideSpec())
    path = write_non_wsi(kind, tmp_path, study, series, seed=4)
    ds = pydicom.dcmread(path)  # raises on a missing preamble / file meta
    assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality) == (study, series, modality)
    assert ds.PatientID == "SYN-4"
    assert path.read_bytes() == write_non_wsi(kind, tmp_path / "again", study, series, seed=4).read_bytes()
    if kind == "ct":
        pixels = ds.pixel_array
        assert pixels.shape == (64, 64) and pixels.dtype == np.int16
        assert pixels.min() < -900 and pixels.max() > 20
    elif kind == "seg":
        assert ds.BitsAllocated == 1 and len(ds.PixelData) == 64 * 64 // 8
        assert ds.SegmentSequence[0].SegmentNumber == 1
    else:
        group = ds.AnnotationGroupSequence[0]
        assert group.GraphicType == "POINT"
        assert struct.unpack("<2f", group.PointCoordinatesData) == (100.0, 50.0)


# ----------------------------------------------------------------------------------------------
# Independent readers (optional)
# ----------------------------------------------------------------------------------------------


def test_wsidicom_reads_series(out_dir: Path) -> None:
    wsidicom = pytest.importorskip("wsidicom")
    spec = SlideSpec(**SMALL, label=True, overview=True, sparse=True, missing_tiles=0.2,
                     shuffle_frames=True)
    folder = write(spec, out_dir)[0].parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with wsidicom.WsiDicom.open(folder) as slide:
            assert len(slide.levels) == 4
            region = np.asarray(slide.read_region((0, 0), 0, (600, 440)))[..., :3]
            assert mae(region, render_region(spec, 0, 0, 600, 440)) < 3
            assert np.asarray(slide.read_label()).shape[:2] == (320, 480)
            assert np.asarray(slide.read_overview()).shape[:2] == (250, 750)


def test_openslide_reads_level0(out_dir: Path) -> None:
    openslide = pytest.importorskip("openslide")
    spec = SlideSpec(**SMALL, transfer_syntax="jpeg-rgb", thumbnail=True)
    path = write(spec, out_dir)[0]
    slide = openslide.OpenSlide(str(path))
    assert slide.level_dimensions[0] == (600, 440) and slide.level_count == 4
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
    region = np.asarray(slide.read_region((0, 0), 0, (600, 440)))[..., :3]
    assert mae(region, render_region(spec, 0, 0, 600, 440)) < 3
