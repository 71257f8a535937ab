"""Shared helpers of the testkit tests: a per-spec cache of written series and independent readers.

The generator is the ground truth for the converter's tests, so its tests check it against
independent readers (pydicom's encapsulation parser, imagecodecs decoders, the raw bitstream
markers, and wsidicom/openslide when installed) rather than against its own helpers; those
readers live here, shared by every test module of the testkit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
)

from converter.testkit import SlideSpec, render_region, write_series

# Small slide: level 0 is 5 x 4 tiles of 128 px with partial edge tiles.
SMALL = dict(width=600, height=440, tile_size=128)
LOSSLESS = ["jpeg2000-lossless", "jpegls", "htj2k", "explicit", "implicit"]

_written: dict[SlideSpec, list[Path]] = {}


def write(spec: SlideSpec, out_dir: Path) -> list[Path]:
    """write_series once per spec per session, into the ``out_dir`` fixture (several tests inspect the same series)."""
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
