"""Deterministic synthetic DICOM whole-slide-image (WSI) series for tests, benchmarks and demos.

Why this exists: the converter has to cope with series from many writers (scanners, wsidicomizer,
Google's wsi2dcm, ...). Real slides are large, licence-encumbered and do not come with ground
truth. This module writes VL Whole Slide Microscopy Image series (SOP class
1.2.840.10008.5.1.4.1.1.77.1.6) whose every pixel is known (:func:`render_region`), in all the
structural variants the converter must survive: TILED_FULL / TILED_SPARSE, missing and shuffled
tiles, concatenations, basic / extended / empty offset tables, multi-fragment frames, every
common transfer syntax, truthful and deliberately wrong colour labels, grayscale, focal planes,
optical paths and associated images.

Design constraints, and how they are met:

* Same spec => byte-identical files. Every UID is a name-based UUID (``2.25.<uuid5>``) derived
  from the seed and the spec; every random choice comes from a seeded generator; dates are
  fixed. (``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and
  returns a random UUID, so it cannot be used.)
* Large slides (e.g. 24000 x 18000) must stream. Frames are rendered and encoded one at a time
  (on a small thread pool; libjpeg, OpenJPEG and most numpy loops release the GIL) and appended
  to a temporary pixel-data file. Only when all frames are written, and so the offsets, lengths
  and compression ratio are known, is the header written with pydicom and the pixel data
  element (tag, Basic Offset Table, items, delimiter) appended by hand. Nothing ever holds a
  decoded level, nor a level's encoded frames.
* Ground truth is a pure function of coordinates (:func:`render_region`), evaluated per level at
  the centre of each level pixel's footprint in level-0 coordinates, with the fine structure
  attenuated as a box filter of that footprint would. Every level is therefore a faithful
  downsample of level 0 without level 0 ever being materialised.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import math
import os
import shutil
import struct
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import itemize_frame
from pydicom.sequence import Sequence as DicomSequence
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

__all__ = [
    "SlideSpec",
    "LevelGeometry",
    "TRANSFER_SYNTAX_UIDS",
    "MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE",
    "available_transfer_syntaxes",
    "expected_photometric",
    "focal_plane_offsets_um",
    "focus_depth_um",
    "level_geometries",
    "missing_tiles",
    "render_region",
    "render_label",
    "series_uids",
    "srgb_icc_profile",
    "write_non_wsi",
    "write_series",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

#: Transfer syntax UID per ``SlideSpec.transfer_syntax`` name.
TRANSFER_SYNTAX_UIDS: dict[str, str] = {
    "jpeg": str(JPEGBaseline8Bit),
    "jpeg-rgb": str(JPEGBaseline8Bit),
    "jpeg2000": str(JPEG2000),
    "jpeg2000-lossless": str(JPEG2000Lossless),
    "jpegls": str(JPEGLSLossless),
    "htj2k": str(HTJ2KLossless),  # .201 is lossless-only, so HTJ2K frames are reversible
    "explicit": str(ExplicitVRLittleEndian),
    "implicit": str(ImplicitVRLittleEndian),
}
_NATIVE = frozenset({"explicit", "implicit"})
_LOSSY = frozenset({"jpeg", "jpeg-rgb", "jpeg2000"})
_LOSSY_METHOD = {"jpeg": "ISO_10918_1", "jpeg-rgb": "ISO_10918_1", "jpeg2000": "ISO_15444_1"}
_OFFSET_TABLES = frozenset({"basic", "extended", "empty"})
_SUBSAMPLINGS = frozenset({"420", "422", "444"})

MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE = "1.2.840.10008.5.1.4.1.1.91.1"

# Name-based UIDs: a fixed namespace, so the same inputs give the same UID on every machine.
_UID_NAMESPACE = uuid.UUID("6f1c1f52-3b7e-5a53-9d0c-7e1f5b0d6a11")
_IMPLEMENTATION_VERSION_NAME = "WSINODE_SYN_1"
_MANUFACTURER = "wsi-node synthetic"
# Fixed dates: a timestamp would break byte-identical output.
_DATE = "20240102"
_TIME = "030405"
_DATETIME = _DATE + _TIME + ".000000"

# Colours (RGB). Saturated on purpose: a YCbCr/RGB mix-up must be glaring, not subtle.
_BACKGROUND = 245.0  # glass inside the scanned area
_WHITE = 255  # outside the image, padding of edge frames, missing tiles
_EOSIN = np.array([230.0, 150.0, 190.0], dtype=np.float32)
_HEMATOXYLIN = np.array([120.0, 70.0, 160.0], dtype=np.float32)

# Geometry of the slide coordinate system (mm). ImageOrientationSlide [0,-1,0,-1,0,0]: image
# columns run along -Y (long axis of the glass), image rows along -X; the origin (top-left
# pixel) sits at (_ORIGIN_X_MM, _ORIGIN_Y_MM), label end of the slide at high Y.
_ORIENTATION = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0)
_ORIGIN_X_MM = 20.0
_ORIGIN_Y_MM = 58.0
_SLIDE_X_MM = 25.0
_SLIDE_Y_MM = 75.0
_FOCAL_PLANE_SPACING_UM = 1.0

_NUCLEUS_CELL = 20.0  # level-0 px: one candidate nucleus per cell of this size
# E[pi r^2] for r uniform in [3, 6.5]: pi * (b^3 - a^3) / (3 (b - a))
_MEAN_NUCLEUS_AREA = math.pi * (6.5**3 - 3.0**3) / (3 * 3.5)

# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlideSpec:
    """Everything that determines a synthetic series; same spec => byte-identical files.

    Frozen and hashable so that the derived model (blob layout, missing tiles, UIDs) can be
    cached per spec and so that a spec can key a fixture cache in the test suite.

    Deviations/clarifications of the original design note:

    * ``fragments_per_frame > 1`` is allowed with ``offset_table`` "basic" or "empty", not
      "extended": PS3.3 C.7.6.3.1.8 only permits the Extended Offset Table when every frame is
      a single fragment (pydicom's reader relies on this too).
    * ``missing_tiles`` and ``shuffle_frames`` require ``sparse`` (TILED_FULL cannot express
      either).
    * ``downsamples`` must start with 1 and increase strictly.
    """

    #: Level-0 total pixel matrix columns / rows.
    width: int = 2048
    height: int = 1536
    #: Frame Columns == Rows (square tiles); edge frames are full size, padded with white.
    tile_size: int = 256
    #: Levels written, e.g. (1, 4, 16); None = 1, 2, 4, ... until a level fits one tile.
    downsamples: tuple[int, ...] | None = None
    #: "jpeg" (Baseline, YCbCr JFIF), "jpeg-rgb" (Baseline, Adobe APP14 transform 0, no
    #: subsampling), "jpeg2000" (lossy, ICT), "jpeg2000-lossless" (RCT), "jpegls" (lossless),
    #: "htj2k" (.201, lossless, RCT), "explicit" / "implicit" (native little endian).
    transfer_syntax: str = "jpeg"
    #: Chroma subsampling of "jpeg": "420", "422" or "444".
    subsampling: str = "420"
    #: Quality of the lossy codecs (JPEG quality; JPEG 2000 maps it to a PSNR target).
    quality: int = 90
    #: Override of the PhotometricInterpretation label only (frames are encoded as usual); None
    #: = the truthful label. "RGB" on "jpeg" reproduces Google wsi2dcm's mislabel.
    photometric: str | None = None
    #: TILED_SPARSE with per-frame Plane Position (Slide) instead of TILED_FULL.
    sparse: bool = False
    #: With sparse: fraction of level-0 tile positions left out (seeded); white there.
    missing_tiles: float = 0.0
    #: With sparse: frames stored in a seeded non-raster order.
    shuffle_frames: bool = False
    #: Split level 0 over this many instances of one Concatenation.
    concatenation_parts: int = 1
    #: "basic", "extended" (Extended Offset Table + empty BOT) or "empty" (empty BOT).
    offset_table: str = "basic"
    #: > 1 splits every encapsulated frame over several fragments (with "basic" or "empty").
    fragments_per_frame: int = 1
    #: Associated images (single frame each).
    label: bool = False
    overview: bool = False
    thumbnail: bool = False
    #: Level-0 focal planes (TotalPixelMatrixFocalPlanes); lower levels have the in-focus one.
    focal_planes: int = 1
    #: Optical paths of the pyramid levels (each renders differently); associated images have 1.
    optical_paths: int = 1
    #: 3 = colour, 1 = 8-bit MONOCHROME2 (luma of the colour rendering).
    samples_per_pixel: int = 3
    #: False omits ImageType (FrameType in the shared functional groups stays), as some
    #: writers do.
    image_type: bool = True
    #: False omits DimensionOrganizationType.
    dimension_organization: bool = True
    #: Each instance gets its own FrameOfReferenceUID (readers then split the pyramid).
    frame_of_reference_per_level: bool = False
    #: Colour images carry an sRGB ICC profile in OpticalPathSequence[0].
    icc_profile: bool = True
    #: (row spacing, column spacing) at level 0 in mm; anisotropic so order bugs show.
    pixel_spacing_mm: tuple[float, float] = (0.00025, 0.0005)
    #: Seeds every UID and random choice: same spec => byte-identical files.
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject impossible combinations early, with a message that says how to fix them."""
        problems: list[str] = []
        if self.width < 1 or self.height < 1:
            problems.append("width and height must be >= 1")
        if self.tile_size < 8:
            problems.append("tile_size must be >= 8")
        if self.transfer_syntax not in TRANSFER_SYNTAX_UIDS:
            problems.append(
                f"transfer_syntax {self.transfer_syntax!r} unknown; use one of "
                f"{sorted(TRANSFER_SYNTAX_UIDS)}"
            )
        if self.subsampling not in _SUBSAMPLINGS:
            problems.append(f"subsampling must be one of {sorted(_SUBSAMPLINGS)}")
        if not 1 <= self.quality <= 100:
            problems.append("quality must be within 1..100")
        if self.offset_table not in _OFFSET_TABLES:
            problems.append(f"offset_table must be one of {sorted(_OFFSET_TABLES)}")
        if self.fragments_per_frame < 1:
            problems.append("fragments_per_frame must be >= 1")
        if self.fragments_per_frame > 1:
            if self.transfer_syntax in _NATIVE:
                problems.append("fragments_per_frame > 1 needs an encapsulated transfer syntax")
            if self.offset_table == "extended":
                problems.append(
                    "fragments_per_frame > 1 cannot use the Extended Offset Table (PS3.3 "
                    "C.7.6.3.1.8: one fragment per frame); use offset_table 'basic' or 'empty'"
                )
        if not 0.0 <= self.missing_tiles < 1.0:
            problems.append("missing_tiles must be within [0, 1)")
        if (self.missing_tiles > 0 or self.shuffle_frames) and not self.sparse:
            problems.append("missing_tiles / shuffle_frames need sparse=True (TILED_SPARSE)")
        if self.concatenation_parts < 1:
            problems.append("concatenation_parts must be >= 1")
        if self.focal_planes < 1 or self.optical_paths < 1:
            problems.append("focal_planes and optical_paths must be >= 1")
        if self.samples_per_pixel not in (1, 3):
            problems.append("samples_per_pixel must be 1 (MONOCHROME2) or 3")
        if self.downsamples is not None:
            ds = self.downsamples
            if not ds or ds[0] != 1 or any(b <= a for a, b in zip(ds, ds[1:])):
                problems.append("downsamples must start with 1 and increase strictly")
        if min(self.pixel_spacing_mm) <= 0:
            problems.append("pixel_spacing_mm must be positive")
        if problems:
            raise ValueError("Invalid SlideSpec: " + "; ".join(problems))
        n0 = _frames_per_plane(self, 1) * self.focal_planes * self.optical_paths
        n0 -= len(missing_tiles(self)) * self.focal_planes * self.optical_paths
        if self.concatenation_parts > max(n0, 1):
            raise ValueError(
                f"Invalid SlideSpec: concatenation_parts={self.concatenation_parts} exceeds the "
                f"{n0} level-0 frames; use fewer parts or a larger slide"
            )


@dataclass(frozen=True)
class LevelGeometry:
    """One pyramid level: its downsample and its size in pixels and tiles."""

    index: int
    downsample: int
    width: int
    height: int
    tiles_x: int
    tiles_y: int


def level_geometries(spec: SlideSpec) -> list[LevelGeometry]:
    """The levels ``write_series`` writes (the default pyramid halves until one tile fits)."""
    if spec.downsamples is not None:
        factors = list(spec.downsamples)
    else:
        factors = [1]
        while (
            math.ceil(spec.width / factors[-1]) > spec.tile_size
            or math.ceil(spec.height / factors[-1]) > spec.tile_size
        ):
            factors.append(factors[-1] * 2)
    out = []
    for i, ds in enumerate(factors):
        w, h = math.ceil(spec.width / ds), math.ceil(spec.height / ds)
        out.append(
            LevelGeometry(i, ds, w, h, math.ceil(w / spec.tile_size), math.ceil(h / spec.tile_size))
        )
    return out


def _frames_per_plane(spec: SlideSpec, downsample: int) -> int:
    w, h = math.ceil(spec.width / downsample), math.ceil(spec.height / downsample)
    return math.ceil(w / spec.tile_size) * math.ceil(h / spec.tile_size)


@functools.lru_cache(maxsize=64)
def missing_tiles(spec: SlideSpec) -> frozenset[tuple[int, int]]:
    """Level-0 tiles (column, row) left out of a sparse series; the slide is white there.

    Chosen uniformly (not only in background) so a reader that fills holes with anything but
    white, or shifts the following tiles, is caught. Deterministic from the seed.
    """
    if not spec.missing_tiles:
        return frozenset()
    tx = math.ceil(spec.width / spec.tile_size)
    ty = math.ceil(spec.height / spec.tile_size)
    n = int(round(spec.missing_tiles * tx * ty))
    n = min(n, tx * ty - 1)  # never drop every tile: an empty instance is not a test case
    rng = np.random.default_rng([spec.seed, 0x4D15])
    chosen = rng.choice(tx * ty, size=n, replace=False)
    return frozenset((int(i % tx), int(i // tx)) for i in chosen)


def focus_depth_um(spec: SlideSpec) -> float:
    """Z (um above the glass) of the in-focus plane: the middle of the level-0 focal planes.

    Slide-coordinate Z runs from the glass (0) towards the coverslip, so every plane must be at
    Z >= 0; a 4 um section focused at 2 um, widened if many planes need the room.
    """
    return max(2.0, (spec.focal_planes - 1) / 2.0 * _FOCAL_PLANE_SPACING_UM)


def focal_plane_offsets_um(spec: SlideSpec) -> tuple[float, ...]:
    """Z offsets (um) of the level-0 focal planes, ascending (the TILED_FULL order, glass to
    coverslip), centred on :func:`focus_depth_um`: e.g. 1, 2, 3 for three planes.

    Lower levels have the in-focus plane only. Planes off focus render blurred and with a
    shifted texture (see :func:`render_region`), so mixing up planes changes pixels.
    """
    n, focus = spec.focal_planes, focus_depth_um(spec)
    return tuple(focus + (k - (n - 1) / 2.0) * _FOCAL_PLANE_SPACING_UM for k in range(n))


def expected_photometric(spec: SlideSpec) -> str:
    """The PhotometricInterpretation written: the override, else the truthful label."""
    if spec.photometric is not None:
        return spec.photometric
    if spec.samples_per_pixel == 1:
        return "MONOCHROME2"
    ts = spec.transfer_syntax
    if ts == "jpeg":
        return "YBR_FULL" if spec.subsampling == "444" else "YBR_FULL_422"
    if ts == "jpeg2000":
        return "YBR_ICT"
    if ts in ("jpeg2000-lossless", "htj2k"):
        return "YBR_RCT"
    return "RGB"  # jpeg-rgb (Adobe, no transform), jpegls (no colour transform), native


def available_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes this imagecodecs build can really encode (probed)."""
    out = []
    probe = np.full((16, 16, 3), 128, np.uint8)
    for name in TRANSFER_SYNTAX_UIDS:
        try:
            _encoder_for(dataclasses.replace(_PROBE_SPEC, transfer_syntax=name))(probe)
        except Exception:  # NotImplementedError, or a codec that is present but broken
            continue
        out.append(name)
    return out


# --------------------------------------------------------------------------------------------
# Deterministic identifiers
# --------------------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    """A name-based UUID as DICOM UID (PS3.5 B.2): identical inputs, identical UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}"


def _spec_key(spec: SlideSpec) -> str:
    """Digest of every field, so that different specs never share a series."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:32]


def series_uids(spec: SlideSpec) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) the spec produces.

    The study depends on the seed only (one synthetic patient per seed); the series on the whole
    spec, so two variants written into the same node never merge into one series.
    """
    return _uid("study", spec.seed), _uid("series", _spec_key(spec))


def _ds(value: float) -> str:
    """Format a decimal string (DS, max 16 chars) without float noise such as 0.30000000000000004."""
    s = f"{value:.10g}"
    if s == "-0":
        s = "0"
    assert len(s) <= 16, s
    return s


# --------------------------------------------------------------------------------------------
# ICC profile
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def srgb_icc_profile() -> bytes:
    """A minimal, valid ICC v2 display profile for sRGB, built byte by byte.

    Why not Pillow's ``ImageCms.createProfile("sRGB")``: LittleCMS stamps the creation time into
    the header, which breaks byte-identical output, and Pillow is not a declared dependency.
    Content: D50-adapted sRGB colorants, the sRGB tone curve sampled at 1024 points (one shared
    curve for R, G and B), D50 white point.
    """

    def s15f16(x: float) -> bytes:
        return struct.pack(">i", int(round(x * 65536)))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15f16(x) + s15f16(y) + s15f16(z)

    def desc(text: str) -> bytes:
        a = text.encode("ascii") + b"\0"
        # textDescriptionType: ASCII, empty Unicode, empty ScriptCode (67 byte field).
        return (
            b"desc\0\0\0\0" + struct.pack(">I", len(a)) + a + b"\0" * 8 + b"\0\0" + b"\0" + b"\0" * 67
        )

    def text(t: str) -> bytes:
        return b"text\0\0\0\0" + t.encode("ascii") + b"\0"

    x = np.linspace(0.0, 1.0, 1024)
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    curve = b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.round(lin * 65535).astype(">u2").tobytes()

    tags: list[tuple[bytes, bytes]] = [
        (b"desc", desc("sRGB (wsi-node synthetic)")),
        (b"cprt", text("No copyright, use freely")),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4360747, 0.2225045, 0.0139322)),
        (b"gXYZ", xyz(0.3850649, 0.7168786, 0.0971045)),
        (b"bXYZ", xyz(0.1430804, 0.0606169, 0.7141733)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, data, placed = [], b"", {}
    for sig, payload in tags:
        if payload in placed:  # share identical data (the three TRCs)
            entries.append((sig, placed[payload], len(payload)))
            continue
        while (offset + len(data)) % 4:
            data += b"\0"
        placed[payload] = offset + len(data)
        entries.append((sig, placed[payload], len(payload)))
        data += payload
    while len(data) % 4:
        data += b"\0"
    body = struct.pack(">I", len(entries)) + b"".join(
        sig + struct.pack(">II", off, size) for sig, off, size in entries
    )
    size = 128 + len(body) + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"  # preferred CMM
        + bytes([2, 0x10, 0, 0])  # version 2.1
        + b"mntr"
        + b"RGB "
        + b"XYZ "
        + struct.pack(">6H", 2024, 1, 2, 3, 4, 5)
        + b"acsp"
        + b"\0" * 4  # platform
        + b"\0" * 4  # flags
        + b"\0" * 4  # manufacturer
        + b"\0" * 4  # model
        + b"\0" * 8  # attributes
        + struct.pack(">I", 0)  # perceptual intent
        + s15f16(0.9642)
        + s15f16(1.0)
        + s15f16(0.8249)
        + b"\0" * 4  # creator
        + b"\0" * 16  # profile ID (v4 only)
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + body + data


# --------------------------------------------------------------------------------------------
# Ground truth rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """Seeded parameters of the synthetic tissue; derived once per spec (cheap to evaluate)."""

    # Tissue field T(s, t) = sum_k a_k(t) * b_k(s) in normalised coordinates s=u/W, t=v/H:
    # Gaussian blobs (separable) plus a boundary wobble (sin(A+B) = sinA cosB + cosA sinB).
    blobs: np.ndarray  # (K, 5): cx, cy, rx, ry, weight
    wobble: np.ndarray  # (M, 4): fs, ft, phase, amplitude (cycles per slide)
    threshold: float
    # Fine texture in level-0 pixel units: (J, 4) fx, fy (cycles/px), phase, amplitude
    texture: np.ndarray
    # Slow stain-intensity variation (cycles per slide): (J, 4)
    stain: np.ndarray
    # Slow variation of nuclear density (cycles per slide): (J, 4)
    density: np.ndarray
    hash_key: int
    missing: np.ndarray | None  # (tiles_y, tiles_x) bool at level 0


@functools.lru_cache(maxsize=64)
def _model(spec: SlideSpec) -> _Model:
    rng = np.random.default_rng([spec.seed, 0x5EED])
    k = 5
    blobs = np.column_stack(
        [
            rng.uniform(0.2, 0.8, k),
            rng.uniform(0.2, 0.8, k),
            rng.uniform(0.12, 0.24, k),
            rng.uniform(0.12, 0.24, k),
            rng.uniform(0.7, 1.0, k),
        ]
    )
    wobble = np.column_stack(
        [
            rng.uniform(2, 6, 3) * rng.choice([-1, 1], 3),
            rng.uniform(2, 6, 3) * rng.choice([-1, 1], 3),
            rng.uniform(0, 2 * np.pi, 3),
            np.array([0.12, 0.08, 0.05]),
        ]
    )

    def waves(n: int, fmin: float, fmax: float, amp: float) -> np.ndarray:
        f = rng.uniform(fmin, fmax, n)
        ang = rng.uniform(0, np.pi, n)
        return np.column_stack(
            [f * np.cos(ang), f * np.sin(ang), rng.uniform(0, 2 * np.pi, n), np.full(n, amp)]
        )

    texture = waves(4, 1 / 40.0, 1 / 7.0, 0.05)  # fibrous eosin texture, periods 7..40 px
    stain = waves(2, 1.0, 3.0, 0.10)
    density = waves(2, 1.5, 4.0, 0.18)
    hash_key = int(rng.integers(1, 2**31))
    # Coverage: pick the threshold as a quantile of the field on a coarse grid, so tissue covers
    # a seeded 40-60 % of the slide whatever the blob layout.
    s = (np.arange(96) + 0.5) / 96
    field = _tissue_field(blobs, wobble, s, s)
    coverage = rng.uniform(0.40, 0.60)
    threshold = float(np.quantile(field, 1.0 - coverage))
    miss = missing_tiles(spec)
    grid = None
    if miss:
        grid = np.zeros(
            (math.ceil(spec.height / spec.tile_size), math.ceil(spec.width / spec.tile_size)), bool
        )
        for c, r in miss:
            grid[r, c] = True
    return _Model(blobs, wobble, threshold, texture, stain, density, hash_key, grid)


def _tissue_factors(
    blobs: np.ndarray, wobble: np.ndarray, s: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Factors (len(t) x K), (K x len(s)) whose product is the tissue field T(t, s).

    Every term is separable: Gaussian blobs directly, the wobble via sin(A+B) = sinA cosB +
    cosA sinB. One small matrix product then evaluates the whole field.
    """
    cx, cy, rx, ry, wt = blobs.T
    a = [wt[:, None] * np.exp(-(((t[None, :] - cy[:, None]) / ry[:, None]) ** 2))]
    b = [np.exp(-(((s[None, :] - cx[:, None]) / rx[:, None]) ** 2))]
    fs, ft, ph, amp = wobble.T
    A = 2 * np.pi * fs[:, None] * s[None, :] + ph[:, None]
    B = 2 * np.pi * ft[:, None] * t[None, :]
    a += [amp[:, None] * np.cos(B), amp[:, None] * np.sin(B)]
    b += [np.sin(A), np.cos(A)]
    return np.ascontiguousarray(np.concatenate(a).T, np.float32), np.concatenate(b).astype(np.float32)


def _tissue_field(blobs: np.ndarray, wobble: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    a, b = _tissue_factors(blobs, wobble, s, t)
    return a @ b


def _wave_factors(
    params: np.ndarray, u: np.ndarray, v: np.ndarray, gain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Factors of sum_j gain_j amp_j sin(2 pi (fx_j u + fy_j v) + phase_j) (separable)."""
    fx, fy, ph, amp = params.T
    A = 2 * np.pi * fx[:, None] * u[None, :] + ph[:, None]
    B = 2 * np.pi * fy[:, None] * v[None, :]
    g = (gain * amp)[:, None]
    a = np.concatenate([g * np.cos(B), g * np.sin(B)])  # (2J, h)
    b = np.concatenate([np.sin(A), np.cos(A)])  # (2J, w)
    return a.T, b


def _waves(params: np.ndarray, u: np.ndarray, v: np.ndarray, gain: np.ndarray) -> np.ndarray:
    a, b = _wave_factors(params, u, v, gain)
    return a.astype(np.float32) @ b.astype(np.float32)


def _hash32(i: np.ndarray, j: np.ndarray, key: int, salt: int) -> np.ndarray:
    """Integer hash of cell coordinates -> uniform float32 in [0, 1). Vectorised, no state."""
    h = (i.astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (j.astype(np.uint32) * np.uint32(0x85EBCA77))
    h ^= np.uint32((key * 0x27D4EB2F + salt * 0x165667B1) & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` in row blocks small enough to stay single-threaded in BLAS.

    Why: OpenBLAS spreads a GEMM over all cores once M*N*K exceeds ~262k; for these thin
    products that costs more in spinning threads than it saves, and it fights the tile thread
    pool (a 24000x18000 slide went from 31 s to 41 s). Blocks of <= 2**17 multiply-adds avoid it.
    """
    rows = max(1, (1 << 17) // max(1, b.shape[0] * b.shape[1]))
    for r0 in range(0, a.shape[0], rows):
        np.matmul(a[r0 : r0 + rows], b, out=out[r0 : r0 + rows])
    return out


_scratch = threading.local()


def _buffers(h: int, w: int) -> dict[str, np.ndarray]:
    """Per-thread scratch arrays, reused across tiles.

    Why: a fresh 256 KiB temporary per numpy operation makes glibc hand memory back to the OS
    and fault it in again on every tile, which tripled the render time. Reusing buffers keeps
    a 256x256 tile at ~1-2 ms.
    """
    cache = getattr(_scratch, "cache", None)
    if cache is None:
        cache = _scratch.cache = {}
    key = (h, w)
    bufs = cache.get(key)
    if bufs is None:
        if len(cache) > 8:
            cache.clear()
        bufs = {name: np.empty((h, w), np.float32) for name in ("alpha", "stain", "a", "b", "c")}
        bufs["idx"] = np.empty((h, w), np.intp)
        bufs["mix"] = np.empty((h, w, 3), np.float32)
        bufs["out3"] = np.empty((h * w, 3), np.float32)
        bufs["out1"] = np.empty((h * w, 1), np.float32)
        cache[key] = bufs
    return bufs


def _shade(
    spec: SlideSpec,
    u: np.ndarray,
    v: np.ndarray,
    foot_x: float,
    foot_y: float,
    z_um: float,
    weights: np.ndarray,
) -> np.ndarray:
    """Pixel values (len(v), len(u), weights.shape[1]) float32 of the tissue at level-0 u, v.

    ``u``/``v`` are the centres of the output pixels in continuous level-0 pixel units (level-0
    pixel i spans [i, i+1)); ``foot_x``/``foot_y`` the size of an output pixel in level-0
    pixels. Fine structure is attenuated as a box filter of that footprint would attenuate it,
    so lower levels match an area-average of level 0 closely.

    The colour model is linear in three scalar fields, out = base*w0 + P*w1 + Q*w2 (see
    :func:`_colour_weights`), so RGB, a rolled channel order or grayscale are just different
    ``weights``. The result is a view into a per-thread scratch buffer: convert or copy it before
    the next call on the same thread.
    """
    m = _model(spec)
    W, H = float(spec.width), float(spec.height)
    dz = z_um - focus_depth_um(spec)  # signed defocus
    defocus = abs(dz)
    h, w = len(v), len(u)
    buf = _buffers(h, w)
    alpha, stain, ta, tb, tc = buf["alpha"], buf["stain"], buf["a"], buf["b"], buf["c"]
    u32 = u.astype(np.float32)
    v32 = v.astype(np.float32)

    # Tissue mask (low frequency, so point evaluation is exact enough at every level).
    fa, fb = _tissue_factors(m.blobs, m.wobble, u / W, v / H)
    _matmul_into(fa, fb, alpha)
    edge = 0.01
    alpha -= np.float32(m.threshold - edge / 2)
    alpha *= np.float32(1.0 / edge)
    np.clip(alpha, 0.0, 1.0, out=alpha)

    # Stain intensity: slow variation plus fibrous texture (box-filter attenuated, blurred when
    # out of focus), all separable, so one product of the concatenated factors.
    sa, sb = _wave_factors(m.stain, u / W, v / H, np.ones(len(m.stain)))
    fx, fy = m.texture[:, 0], m.texture[:, 1]
    gain = np.sinc(fx * foot_x) * np.sinc(fy * foot_y) / (1.0 + 2.0 * defocus)
    # A different depth shows different fibres: shift the texture phase with signed defocus.
    texture = m.texture.copy()
    texture[:, 2] += 1.3 * dz
    xa, xb = _wave_factors(texture, u, v, gain)
    _matmul_into(
        np.ascontiguousarray(np.concatenate([sa, xa], axis=1), np.float32),
        np.concatenate([sb, xb]).astype(np.float32),
        stain,
    )
    stain += np.float32(1.0)

    # Nuclei: at most one per cell, round, hash-placed entirely inside its cell.
    C = _NUCLEUS_CELL
    rb = math.sqrt(foot_x * foot_y / math.pi)  # pixel footprint as a disc (level-0 px)
    # Once a pixel spans several cells its true average is the expected nuclear coverage.
    blend = min(max((rb - C / 4) / (C / 4), 0.0), 1.0)
    r, dx, dy = ta, tb, tc
    if blend >= 1.0:
        # Pure expectation: no per-cell work (the cell grid may be huge, e.g. the overview).
        dens = _waves(m.density, u / W, v / H, np.ones(len(m.density)))
        dens += np.float32(0.6)
        np.clip(dens, 0.0, 1.0, out=dens)
        cover = np.multiply(dens, np.float32(_MEAN_NUCLEUS_AREA / C**2), out=dx)
        shade = dy
        shade.fill(np.float32(0.975))
    else:
        ci = np.floor(u / C).astype(np.intp)
        cj = np.floor(v / C).astype(np.intp)
        i0, j0 = int(ci.min()), int(cj.min())
        gi = np.arange(i0, int(ci.max()) + 1)
        gj = np.arange(j0, int(cj.max()) + 1)
        GI, GJ = np.meshgrid(gi, gj)
        rad = 3.0 + 3.5 * _hash32(GI, GJ, m.hash_key, 1)
        cxc = (GI * C + rad + (C - 2 * rad) * _hash32(GI, GJ, m.hash_key, 2)).astype(np.float32)
        cyc = (GJ * C + rad + (C - 2 * rad) * _hash32(GI, GJ, m.hash_key, 3)).astype(np.float32)
        dens = _waves(m.density, (gi + 0.5) * C / W, (gj + 0.5) * C / H, np.ones(len(m.density)))
        dens = np.clip(dens + np.float32(0.6), 0.0, 1.0)
        present = _hash32(GI, GJ, m.hash_key, 4) < dens
        rad_eff = np.where(present, rad, 0.0).astype(np.float32)
        dark = (0.8 + 0.35 * _hash32(GI, GJ, m.hash_key, 5)).astype(np.float32)
        idx = buf["idx"]
        np.add(((cj - j0) * len(gi))[:, None], (ci - i0)[None, :], out=idx)
        np.take(rad_eff.ravel(), idx, out=r)
        np.take(cxc.ravel(), idx, out=dx)
        np.subtract(u32[None, :], dx, out=dx)
        np.take(cyc.ravel(), idx, out=dy)
        np.subtract(v32[:, None], dy, out=dy)
        dx *= dx
        dy *= dy
        dx += dy
        d = np.sqrt(dx, out=dx)
        # Coverage ramp across the nucleus edge; half-width = footprint plus defocus blur.
        # Small nuclei under a big footprint are scaled by their area share.
        hw = max(rb, 0.5) + 1.5 * defocus
        cover = np.subtract(r, d, out=dx)
        cover += np.float32(hw)
        cover *= np.float32(1.0 / (2 * hw))
        np.clip(cover, 0.0, 1.0, out=cover)
        r *= np.float32(1.0 / hw)
        r *= r
        np.minimum(r, np.float32(1.0), out=r)
        cover *= r
        if blend > 0:
            mean_cover = (dens * np.float32(_MEAN_NUCLEUS_AREA / C**2)).astype(np.float32)
            expected = np.take(mean_cover.ravel(), idx, out=dy)
            cover *= np.float32(1 - blend)
            expected *= np.float32(blend)
            cover += expected
        shade = np.take(dark.ravel(), idx, out=dy)

    # Composite (per channel c, E = 255 - eosin, Hm = 255 - hematoxylin):
    #   tissue_c = 255 - (E_c * stain * (1 - cover) + Hm_c * shade * cover)
    #   out_c    = bg + alpha * (tissue_c - bg) = base - E_c * P - Hm_c * Q
    mix = buf["mix"]
    q = np.multiply(alpha, cover, out=r)
    p = np.subtract(alpha, q, out=mix[..., 1])
    p *= stain
    np.multiply(q, shade, out=mix[..., 2])
    base = mix[..., 0]
    np.multiply(alpha, np.float32(255.0 - _BACKGROUND), out=base)
    base += np.float32(_BACKGROUND + 0.5)  # + 0.5: rounding, folded in here
    out = buf["out3"] if weights.shape[1] == 3 else buf["out1"]
    _matmul_into(mix.reshape(-1, 3), weights, out)
    return out.reshape(h, w, weights.shape[1])


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _colour_weights(spec: SlideSpec, optical_path: int) -> np.ndarray:
    """(3 x channels) weights turning (base, P, Q) into output samples (see :func:`_shade`).

    Each optical path gets a distinct rendition (rolled channels, and paler from path 4 on), so
    a reader that mixes optical paths up is caught; grayscale is the Rec. 601 luma.
    """
    wts = np.stack(
        [np.ones(3, np.float32), -(255.0 - _EOSIN), -(255.0 - _HEMATOXYLIN)]
    ).astype(np.float32)
    if optical_path:
        wts = np.roll(wts, optical_path % 3, axis=1)
    if spec.samples_per_pixel == 1:
        wts = wts @ _LUMA[:, None]
    if optical_path >= 3:
        wts = wts * np.float32(0.7)  # paler: 255 - (255 - x) * 0.7; constant in _to_uint8
    return np.ascontiguousarray(wts, np.float32)


def _to_uint8(spec: SlideSpec, values: np.ndarray, inside: np.ndarray, optical_path: int) -> np.ndarray:
    """Clip (values already include the +0.5 rounding offset), white outside, to uint8."""
    if optical_path >= 3:
        # 0.7 (x + 0.5) + 76.65 == (0.7 x + 76.5) + 0.5: paler path, rounding kept.
        values += np.float32(76.65)
    np.clip(values, 0, 255, out=values)
    out = values.astype(np.uint8)
    if spec.samples_per_pixel == 1:
        out = out[..., 0]
    out[~inside] = _WHITE
    return out


def render_region(
    spec: SlideSpec,
    x: int,
    y: int,
    w: int,
    h: int,
    downsample: int = 1,
    *,
    z_um: float | None = None,
    optical_path: int = 0,
) -> np.ndarray:
    """Ground-truth pixels of the slide at the level with ``downsample``, in that level's pixels.

    Returns uint8 (h, w, 3), or (h, w) when ``spec.samples_per_pixel == 1``. Pure, deterministic
    and vectorised (a 256x256 tile costs a couple of ms). Pixels outside the level
    (``ceil(width / downsample)`` x ``ceil(height / downsample)``) and pixels over a missing
    level-0 tile (``missing_tiles(spec)``) are white (255); the scanned glass inside the image is
    ~245. ``z_um`` is the focal plane's Z offset in the slide coordinate system (as written in
    ZOffsetInSlideCoordinateSystem, see :func:`focal_plane_offsets_um`); None means the in-focus
    plane. Off focus, nuclei and texture blur and the texture shifts with the signed distance.
    ``optical_path`` is the 0-based optical path (each renders distinguishably).
    """
    ds = int(downsample)
    if ds < 1:
        raise ValueError("downsample must be >= 1")
    if w <= 0 or h <= 0:
        shape = (max(h, 0), max(w, 0)) + ((3,) if spec.samples_per_pixel == 3 else ())
        return np.zeros(shape, np.uint8)
    lw, lh = math.ceil(spec.width / ds), math.ceil(spec.height / ds)
    xs = np.arange(x, x + w)
    ys = np.arange(y, y + h)
    u = (xs + 0.5) * ds
    v = (ys + 0.5) * ds
    z = focus_depth_um(spec) if z_um is None else float(z_um)
    values = _shade(spec, u, v, float(ds), float(ds), z, _colour_weights(spec, optical_path))
    inside = ((ys >= 0) & (ys < lh))[:, None] & ((xs >= 0) & (xs < lw))[None, :]
    _mask_missing(spec, u, v, inside)
    return _to_uint8(spec, values, inside, optical_path)


def _mask_missing(spec: SlideSpec, u: np.ndarray, v: np.ndarray, inside: np.ndarray) -> None:
    """Clear ``inside`` where the level-0 position falls in a missing tile (white there)."""
    m = _model(spec)
    if m.missing is None:
        return
    tx = np.clip(np.floor(u / spec.tile_size).astype(np.intp), 0, m.missing.shape[1] - 1)
    ty = np.clip(np.floor(v / spec.tile_size).astype(np.intp), 0, m.missing.shape[0] - 1)
    inside &= ~m.missing[np.ix_(ty, tx)]


def _render_resampled(
    spec: SlideSpec, out_w: int, out_h: int, factor_x: float, factor_y: float
) -> np.ndarray:
    """The whole slide at a non-integer downsample (thumbnail); cells beyond the image are white."""
    xs, ys = np.arange(out_w), np.arange(out_h)
    u, v = (xs + 0.5) * factor_x, (ys + 0.5) * factor_y
    values = _shade(spec, u, v, factor_x, factor_y, focus_depth_um(spec), _colour_weights(spec, 0))
    inside = (ys * factor_y < spec.height)[:, None] & (xs * factor_x < spec.width)[None, :]
    _mask_missing(spec, u, v, inside)
    return _to_uint8(spec, values, inside, 0)


# 5x7 bitmap glyphs, enough for "SYN-<seed>" and "WSI-NODE" on the label.
_GLYPHS = {
    "0": "01110100011001110101110011000101110",
    "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111",
    "3": "11111000100010000010000011000101110",
    "4": "00010001100101010010111110001000010",
    "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110",
    "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110",
    "9": "01110100011000101111000010001001100",
    "S": "01111100001000001110000010000111110",
    "Y": "10001100010101000100001000010000100",
    "N": "10001110011010110011100011000110001",
    "W": "10001100011000110101101011010101010",
    "I": "01110001000010000100001000010001110",
    "O": "01110100011000110001100011000101110",
    "D": "11110100011000110001100011000111110",
    "E": "11111100001000011110100001000011111",
    "-": "00000000000000011111000000000000000",
}


def _draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int, color: float) -> None:
    for n, ch in enumerate(text):
        bits = _GLYPHS.get(ch)
        if bits is None:
            continue
        g = np.array([int(b) for b in bits], dtype=bool).reshape(7, 5)
        g = np.kron(g, np.ones((scale, scale), dtype=bool))
        x0 = x + n * 6 * scale
        sub = img[y : y + g.shape[0], x0 : x0 + g.shape[1]]
        sub[g[: sub.shape[0], : sub.shape[1]]] = color


def render_label(spec: SlideSpec, width: int = 480, height: int = 320) -> np.ndarray:
    """The slide label: "SYN-<seed>", "WSI-NODE", a seeded barcode and a blue pen mark."""
    img = np.full((height, width, 3), 250.0, dtype=np.float32)
    img[: height // 8, :] = np.array([40.0, 90.0, 200.0])  # coloured stripe: not a grey image
    scale = max(1, min(width // 60, height // 40))
    _draw_text(img, f"SYN-{spec.seed}", width // 16, height // 5, scale, 25.0)
    _draw_text(img, "WSI-NODE", width // 16, height // 5 + 10 * scale, scale, 25.0)
    bits = hashlib.sha256(f"barcode/{spec.seed}".encode()).digest()
    bar_w = max(1, width // 160)
    x = width // 16
    y0, y1 = int(height * 0.68), int(height * 0.92)
    for byte in bits:
        for k in range(8):
            if x + bar_w > width - width // 16:
                break
            if byte >> k & 1:
                img[y0:y1, x : x + bar_w] = 20.0
            x += bar_w
    if spec.samples_per_pixel == 1:
        return np.clip(img @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _thumbnail_geometry(spec: SlideSpec, longest: int = 512) -> tuple[int, int, float]:
    f = max(spec.width, spec.height) / float(longest)
    f = max(f, 1.0)
    return math.ceil(spec.width / f), math.ceil(spec.height / f), f


def _render_thumbnail(spec: SlideSpec) -> np.ndarray:
    tw, th, f = _thumbnail_geometry(spec)
    return _render_resampled(spec, tw, th, f, f)


_OVERVIEW_SPACING_MM = 0.1


def _render_overview(spec: SlideSpec) -> np.ndarray:
    """The whole glass slide (75 x 25 mm) at 0.1 mm/px, tissue and label in place."""
    sp = _OVERVIEW_SPACING_MM
    cols, rows = int(_SLIDE_Y_MM / sp), int(_SLIDE_X_MM / sp)
    # Overview pixel (c, r) centre -> slide (X, Y) -> level-0 pixel (u, v); same orientation.
    c, r = np.arange(cols) + 0.5, np.arange(rows) + 0.5
    slide_y = _SLIDE_Y_MM - c * sp
    slide_x = _SLIDE_X_MM - r * sp
    row_mm, col_mm = spec.pixel_spacing_mm
    u = (_ORIGIN_Y_MM - slide_y) / col_mm
    v = (_ORIGIN_X_MM - slide_x) / row_mm
    rgb_spec = dataclasses.replace(spec, samples_per_pixel=3)
    rgb = _shade(
        rgb_spec, u, v, sp / col_mm, sp / row_mm, focus_depth_um(spec), _colour_weights(rgb_spec, 0)
    ).copy()
    inside = ((v >= 0) & (v < spec.height))[:, None] & ((u >= 0) & (u < spec.width))[None, :]
    _mask_missing(spec, u, v, inside)
    glass = np.array([228.5, 230.5, 236.5], dtype=np.float32)
    rgb = np.where(inside[..., None], rgb, glass)
    # Label area: high Y (left of the image), nearest-neighbour copy of the label.
    lab = render_label(rgb_spec).astype(np.float32) + np.float32(0.5)
    lc = int(13.0 / sp)
    yy = (np.arange(rows) * lab.shape[0] / rows).astype(int)
    xx = (np.arange(lc) * lab.shape[1] / lc).astype(int)
    rgb[:, :lc] = lab[np.ix_(yy, xx)]
    if spec.samples_per_pixel == 1:
        rgb = rgb @ _LUMA[:, None]
    return _to_uint8(spec, rgb, np.ones((rows, cols), bool), 0)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _strip_spiff(data: bytes) -> bytes:
    """Drop CharLS's SPIFF APP8 header (and its end-of-directory entry, which embeds a second
    SOI marker): DICOM JPEG-LS writers emit a plain SOI-SOF55 stream, and some readers trip
    over the SPIFF segments."""
    if data[:2] != b"\xff\xd8":
        return data
    out = bytearray(b"\xff\xd8")
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] == 0xE8:
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        i += 2 + length
    out += data[i:]
    return bytes(out)


def _encoder_for(spec: SlideSpec) -> Callable[[np.ndarray], bytes]:
    """The frame encoder for the spec's transfer syntax (raises NotImplementedError if absent)."""
    ts = spec.transfer_syntax
    q = spec.quality
    if ts == "jpeg":
        sub = spec.subsampling

        def enc(a: np.ndarray) -> bytes:
            if a.ndim == 2:
                return bytes(imagecodecs.jpeg8_encode(a, level=q))
            return bytes(
                imagecodecs.jpeg8_encode(
                    a, level=q, colorspace="RGB", outcolorspace="YCBCR", subsampling=sub
                )
            )

        return enc
    if ts == "jpeg-rgb":

        def enc(a: np.ndarray) -> bytes:
            if a.ndim == 2:
                return bytes(imagecodecs.jpeg8_encode(a, level=q))
            # outcolorspace RGB: libjpeg-turbo writes Adobe APP14 transform=0, no subsampling.
            return bytes(
                imagecodecs.jpeg8_encode(a, level=q, colorspace="RGB", outcolorspace="RGB")
            )

        return enc
    if ts in ("jpeg2000", "jpeg2000-lossless"):
        lossless = ts == "jpeg2000-lossless"
        # imagecodecs' `level` for JPEG 2000 is a target PSNR in dB; map quality 1..100 to
        # 25..45 dB (quality 90 -> 43 dB, close to JPEG q90 on this content).
        psnr = 25.0 + 0.2 * q

        def enc(a: np.ndarray) -> bytes:
            if lossless:
                return bytes(
                    imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, numthreads=1)
                )
            return bytes(
                imagecodecs.jpeg2k_encode(
                    a, level=psnr, codecformat="J2K", reversible=False, numthreads=1
                )
            )

        return enc
    if ts == "jpegls":
        if not getattr(imagecodecs, "JPEGLS", None) or not imagecodecs.JPEGLS.available:
            raise NotImplementedError("this imagecodecs build cannot encode JPEG-LS")
        return lambda a: _strip_spiff(bytes(imagecodecs.jpegls_encode(a)))
    if ts == "htj2k":
        htj2k = getattr(imagecodecs, "HTJ2K", None)
        if htj2k is None or not htj2k.available or not hasattr(imagecodecs, "htj2k_encode"):
            raise NotImplementedError("this imagecodecs build cannot encode HTJ2K")

        def enc(a: np.ndarray) -> bytes:
            return bytes(imagecodecs.htj2k_encode(a, reversible=True, rgb=a.ndim == 3))

        return enc
    if ts in _NATIVE:
        return lambda a: np.ascontiguousarray(a).tobytes()
    raise ValueError(ts)  # unreachable: validated in SlideSpec


_PROBE_SPEC = SlideSpec(width=16, height=16, tile_size=16)


def _ordered_map(fn: Callable[[object], bytes], items: Iterable[object], workers: int) -> Iterator[bytes]:
    """``map`` on a thread pool, results in order, at most ~4 x workers frames in flight.

    Bounded so that memory stays flat however many frames an instance has.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    window: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 4 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


# --------------------------------------------------------------------------------------------
# Writing: header with pydicom, pixel data streamed by hand
# --------------------------------------------------------------------------------------------


@dataclass
class _PixelStats:
    frames: int = 0
    payload: int = 0  # sum of encoded frame lengths (for the compression ratio)


def _write_instance(
    path: Path,
    ds: Dataset,
    frames: Iterator[bytes],
    *,
    transfer_syntax: str,
    offset_table: str,
    fragments_per_frame: int,
    raw_frame_bytes: int,
    lossy: bool,
) -> None:
    """Stream frames into a temporary file, then write header + pixel data element to ``path``.

    The Basic Offset Table, the Extended Offset Table and the lossy compression ratio all depend
    on every frame's size, which is only known at the end; writing the frames to a side file
    first keeps memory flat and the final file strictly sequential.
    """
    native = transfer_syntax in _NATIVE
    if native and raw_frame_bytes * int(ds.NumberOfFrames) > 0xFFFFFFFE:
        raise ValueError(
            f"{path.name}: native pixel data of {raw_frame_bytes * int(ds.NumberOfFrames)} bytes "
            "exceeds the 4 GiB element limit; use concatenation_parts or a compressed syntax"
        )
    tmp = path.with_name(path.name + ".pixels.tmp")
    stats = _PixelStats()
    item_offsets: list[int] = []  # offset of each frame's first item, after the BOT
    item_sizes: list[int] = []  # bytes of each frame's item(s), incl. headers
    position = 0
    try:
        with open(tmp, "w+b") as side:
            for data in frames:
                stats.frames += 1
                stats.payload += len(data)
                if native:
                    side.write(data)
                    continue
                item_offsets.append(position)
                size = 0
                for item in itemize_frame(data, fragments_per_frame):
                    side.write(item)
                    size += len(item)
                item_sizes.append(size)
                position += size
            total = side.tell()

            if lossy and stats.payload:
                ratio = raw_frame_bytes * stats.frames / stats.payload
                ds.LossyImageCompressionRatio = _ds(round(ratio, 2))
            use_eot = not native and offset_table == "extended"
            if use_eot:
                ds.ExtendedOffsetTable = struct.pack(f"<{len(item_offsets)}Q", *item_offsets)
                # Lengths of each frame's single item value (even-padded), as pydicom writes.
                ds.ExtendedOffsetTableLengths = struct.pack(
                    f"<{len(item_sizes)}Q", *(s - 8 for s in item_sizes)
                )
            ds.save_as(
                path,
                enforce_file_format=True,
                implicit_vr=transfer_syntax == "implicit",
                little_endian=True,
            )
            side.seek(0)
            with open(path, "ab") as out:
                tag = b"\xe0\x7f\x10\x00"
                if native:
                    pad = total % 2
                    if transfer_syntax == "implicit":
                        out.write(tag + struct.pack("<I", total + pad))
                    else:
                        out.write(tag + b"OB\0\0" + struct.pack("<I", total + pad))
                    shutil.copyfileobj(side, out, 1 << 20)
                    if pad:
                        out.write(b"\0")
                    return
                out.write(tag + b"OB\0\0" + b"\xff\xff\xff\xff")
                if offset_table == "basic":
                    if item_offsets and item_offsets[-1] > 0xFFFFFFFF:
                        raise ValueError(
                            f"{path.name}: frame offsets exceed the 32-bit Basic Offset Table; "
                            "use offset_table='extended' or concatenation_parts"
                        )
                    out.write(b"\xfe\xff\x00\xe0" + struct.pack("<I", 4 * len(item_offsets)))
                    out.write(struct.pack(f"<{len(item_offsets)}I", *item_offsets))
                else:  # empty BOT (also required with the Extended Offset Table)
                    out.write(b"\xfe\xff\x00\xe0\x00\x00\x00\x00")
                shutil.copyfileobj(side, out, 1 << 20)
                out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    finally:
        tmp.unlink(missing_ok=True)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = _uid("implementation", "wsi-node-synthetic", 1)
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME
    return meta


def _patient_study(ds: Dataset, seed: int, study_uid: str, series_uid: str) -> None:
    ds.PatientName = "Synthetic^Slide"
    ds.PatientID = f"SYN-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = _DATE
    ds.StudyTime = _TIME
    ds.SeriesDate = _DATE
    ds.SeriesTime = _TIME
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"SYN{seed}"[:16]
    ds.StudyDescription = "wsi-node synthetic slide"
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.DeviceSerialNumber = "SYN-0001"
    ds.SoftwareVersions = "wsi-node synthetic 1"


@dataclass(frozen=True)
class _Frame:
    """One frame of an instance: tile position in its level, focal plane and optical path."""

    col: int
    row: int
    plane: int
    path: int


@dataclass
class _Instance:
    """Everything needed to write one instance (a level, a concatenation part, an associated image)."""

    name: str
    role: str  # "VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL"
    downsample: float
    total_cols: int
    total_rows: int
    frame_cols: int
    frame_rows: int
    frames: list[_Frame]
    planes: tuple[float, ...]
    frame_of_reference: str
    instance_number: int
    render: Callable[[_Frame], np.ndarray]
    spacing: tuple[float, float]  # PixelSpacing (row, col) mm
    level_index: int = 0
    concatenation: tuple[str, str, int, int, int] | None = None  # uid, source, offset, n, total


def _wsi_dataset(spec: SlideSpec, inst: _Instance, sop_uid: str) -> Dataset:
    """The full WSI header of one instance (everything but pixel data / offset tables)."""
    study_uid, series_uid = series_uids(spec)
    ts_uid = TRANSFER_SYNTAX_UIDS[spec.transfer_syntax]
    ds = Dataset()
    ds.file_meta = _file_meta(str(VLWholeSlideMicroscopyImageStorage), sop_uid, ts_uid)
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, spec.seed, study_uid, series_uid)
    ds.Modality = "SM"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"synthetic {spec.transfer_syntax} {spec.width}x{spec.height}"
    ds.InstanceNumber = inst.instance_number
    ds.AcquisitionDateTime = _DATETIME
    ds.FrameOfReferenceUID = inst.frame_of_reference
    ds.PositionReferenceIndicator = "SLIDE_CORNER"

    derived = inst.role == "THUMBNAIL" or (inst.role == "VOLUME" and inst.level_index > 0)
    image_type = (
        ["DERIVED", "PRIMARY", inst.role, "RESAMPLED"]
        if derived
        else ["ORIGINAL", "PRIMARY", inst.role, "NONE"]
    )
    if spec.image_type:
        ds.ImageType = image_type

    if spec.dimension_organization:
        ds.DimensionOrganizationType = (
            "TILED_SPARSE" if spec.sparse and inst.role == "VOLUME" else "TILED_FULL"
        )
    sparse = spec.sparse and inst.role == "VOLUME"

    # Specimen module
    ds.ContainerIdentifier = f"SYN-{spec.seed}-SLIDE"
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence()
    ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier = f"SYN-{spec.seed}-S1"
    specimen.SpecimenUID = _uid("specimen", spec.seed)
    specimen.IssuerOfTheSpecimenIdentifierSequence = DicomSequence()
    specimen.SpecimenPreparationSequence = DicomSequence()
    ds.SpecimenDescriptionSequence = [specimen]
    ds.AcquisitionContextSequence = DicomSequence()

    # Image pixel
    spp = spec.samples_per_pixel
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = expected_photometric(spec)
    if spp == 3:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = len(inst.frames)
    ds.Rows = inst.frame_rows
    ds.Columns = inst.frame_cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    lossy = spec.transfer_syntax in _LOSSY
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[spec.transfer_syntax]
        ds.LossyImageCompressionRatio = "1"  # replaced once all frames are encoded
    if spp == 1:
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"

    # Whole slide microscopy image module
    row_mm, col_mm = spec.pixel_spacing_mm
    ds.ImagedVolumeWidth = float(spec.width * col_mm)  # FL, mm
    ds.ImagedVolumeHeight = float(spec.height * row_mm)  # FL, mm
    ds.ImagedVolumeDepth = float(len(inst.planes) * _FOCAL_PLANE_SPACING_UM)  # FL, um
    ds.TotalPixelMatrixColumns = inst.total_cols
    ds.TotalPixelMatrixRows = inst.total_rows
    ds.TotalPixelMatrixFocalPlanes = len(inst.planes)
    origin = Dataset()
    if inst.role == "OVERVIEW":
        origin.XOffsetInSlideCoordinateSystem = _ds(_SLIDE_X_MM)
        origin.YOffsetInSlideCoordinateSystem = _ds(_SLIDE_Y_MM)
    else:
        origin.XOffsetInSlideCoordinateSystem = _ds(_ORIGIN_X_MM)
        origin.YOffsetInSlideCoordinateSystem = _ds(_ORIGIN_Y_MM)
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [_ds(v) for v in _ORIENTATION]
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "YES" if inst.role in ("LABEL", "OVERVIEW") else "NO"
    ds.BurnedInAnnotation = "YES" if inst.role in ("LABEL", "OVERVIEW") else "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    # White as CIELab (L*=100, a*=b*=0), PS3.3 C.10.7.1.1 encoding: what to show for absent tiles.
    ds.RecommendedAbsentPixelCIELabValue = [0xFFFF, 0x8080, 0x8080]
    if inst.role == "LABEL":
        ds.LabelText = f"SYN-{spec.seed} WSI-NODE"
        ds.BarcodeValue = hashlib.sha256(f"barcode/{spec.seed}".encode()).hexdigest()[:16]

    # Optical paths
    n_paths = spec.optical_paths if inst.role == "VOLUME" else 1  # associated: one frame
    ds.NumberOfOpticalPaths = n_paths
    paths = []
    for p in range(n_paths):
        op = Dataset()
        op.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
        op.OpticalPathIdentifier = str(p + 1)
        op.OpticalPathDescription = f"synthetic path {p + 1}"
        op.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
        op.ObjectiveLensPower = "20"
        if spp == 3 and spec.icc_profile:
            op.ColorSpace = "SRGB"
            op.ICCProfile = srgb_icc_profile()
        paths.append(op)
    ds.OpticalPathSequence = paths

    # Multi-frame dimension module
    dim_org_uid = _uid("dimension-organization", _spec_key(spec))
    org = Dataset()
    org.DimensionOrganizationUID = dim_org_uid
    ds.DimensionOrganizationSequence = [org]
    dims = []

    def dim(pointer: int, group: int, label: str) -> None:
        item = Dataset()
        item.DimensionOrganizationUID = dim_org_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = group
        item.DimensionDescriptionLabel = label
        dims.append(item)

    # First item = slowest varying index (PS3.3 C.7.6.17.1): path, plane, row, column.
    if n_paths > 1:
        dim(0x00480106, 0x00480207, "Optical Path")
    if len(inst.planes) > 1:
        dim(0x0040073A, 0x0048021A, "Focal Plane")
    dim(0x0048021F, 0x0048021A, "Row Position")
    dim(0x0048021E, 0x0048021A, "Column Position")
    ds.DimensionIndexSequence = dims

    # Shared functional groups
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(inst.spacing[0]), _ds(inst.spacing[1])]
    measures.SliceThickness = _ds(_FOCAL_PLANE_SPACING_UM / 1000.0)
    if len(inst.planes) > 1:
        measures.SpacingBetweenSlices = _ds(_FOCAL_PLANE_SPACING_UM / 1000.0)
    shared.PixelMeasuresSequence = [measures]
    frame_type = Dataset()
    frame_type.FrameType = image_type
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    if n_paths == 1 and not sparse:
        opid = Dataset()
        opid.OpticalPathIdentifier = "1"
        shared.OpticalPathIdentificationSequence = [opid]
    ds.SharedFunctionalGroupsSequence = [shared]

    if sparse:
        per_frame = []
        rs, cs = inst.spacing
        t = spec.tile_size
        for f in inst.frames:
            item = Dataset()
            pos = Dataset()
            px, py = f.col * t, f.row * t
            # Slide position of the frame's top-left pixel (orientation [0,-1,0,-1,0,0]).
            pos.XOffsetInSlideCoordinateSystem = _ds(_ORIGIN_X_MM - py * rs)
            pos.YOffsetInSlideCoordinateSystem = _ds(_ORIGIN_Y_MM - px * cs)
            pos.ZOffsetInSlideCoordinateSystem = _ds(inst.planes[f.plane])
            pos.ColumnPositionInTotalImagePixelMatrix = px + 1
            pos.RowPositionInTotalImagePixelMatrix = py + 1
            item.PlanePositionSlideSequence = [pos]
            opid = Dataset()
            opid.OpticalPathIdentifier = str(f.path + 1)
            item.OpticalPathIdentificationSequence = [opid]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame

    if inst.concatenation is not None:
        cuid, source, offset, number, total = inst.concatenation
        ds.ConcatenationUID = cuid
        ds.SOPInstanceUIDOfConcatenationSource = source
        ds.ConcatenationFrameOffsetNumber = offset
        ds.InConcatenationNumber = number
        ds.InConcatenationTotalNumber = total
    return ds


def _level_frames(spec: SlideSpec, geo: LevelGeometry, planes: int, paths: int) -> list[_Frame]:
    """Frames of a level in TILED_FULL order (column fastest, then row, plane, path), minus
    missing tiles, shuffled when asked (sparse only)."""
    miss = missing_tiles(spec) if geo.index == 0 else frozenset()
    frames = [
        _Frame(c, r, z, p)
        for p in range(paths)
        for z in range(planes)
        for r in range(geo.tiles_y)
        for c in range(geo.tiles_x)
        if (c, r) not in miss
    ]
    if spec.shuffle_frames:
        order = np.random.default_rng([spec.seed, 0x5AF1, geo.index]).permutation(len(frames))
        frames = [frames[i] for i in order]
    return frames


def _plan(spec: SlideSpec) -> list[_Instance]:
    """All instances of the series, in writing order, with their frames and renderers."""
    key = _spec_key(spec)
    row_mm, col_mm = spec.pixel_spacing_mm
    shared_for = _uid("frame-of-reference", key)
    t = spec.tile_size
    out: list[_Instance] = []
    instance_number = 1
    z_all = focal_plane_offsets_um(spec)

    for geo in level_geometries(spec):
        planes = z_all if geo.index == 0 else (focus_depth_um(spec),)
        frames = _level_frames(spec, geo, len(planes), spec.optical_paths)
        for_uid = shared_for
        if spec.frame_of_reference_per_level:
            for_uid = _uid("frame-of-reference", key, geo.index)

        def render(f: _Frame, ds: int = geo.downsample, planes: tuple[float, ...] = planes) -> np.ndarray:
            return render_region(
                spec, f.col * t, f.row * t, t, t, ds, z_um=planes[f.plane], optical_path=f.path
            )

        common = dict(
            role="VOLUME",
            downsample=geo.downsample,
            total_cols=geo.width,
            total_rows=geo.height,
            frame_cols=t,
            frame_rows=t,
            planes=planes,
            frame_of_reference=for_uid,
            instance_number=instance_number,
            render=render,
            spacing=(row_mm * geo.downsample, col_mm * geo.downsample),
            level_index=geo.index,
        )
        parts = spec.concatenation_parts if geo.index == 0 else 1
        if parts == 1:
            out.append(_Instance(name=f"level-{geo.index}", frames=frames, **common))
        else:
            cuid = _uid("concatenation", key, geo.index)
            source = _uid("concatenation-source", key, geo.index)
            # Balanced split (sizes differ by at most one), so exactly `parts` non-empty parts.
            base, extra = divmod(len(frames), parts)
            sizes = [base + (k < extra) for k in range(parts)]
            starts = [sum(sizes[:k]) for k in range(parts)]
            bounds = [(a, a + n) for a, n in zip(starts, sizes)]
            for k, (a, b) in enumerate(bounds):
                out.append(
                    _Instance(
                        name=f"level-{geo.index}-part-{k + 1}",
                        frames=frames[a:b],
                        concatenation=(cuid, source, a, k + 1, len(bounds)),
                        **common,
                    )
                )
        instance_number += 1

    def single(
        name: str, role: str, image: Callable[[], np.ndarray], spacing: tuple[float, float], n: int
    ) -> _Instance:
        arr = image()
        for_uid = _uid("frame-of-reference", key, name) if spec.frame_of_reference_per_level else shared_for
        return _Instance(
            name=name,
            role=role,
            downsample=spacing[1] / col_mm,
            total_cols=arr.shape[1],
            total_rows=arr.shape[0],
            frame_cols=arr.shape[1],
            frame_rows=arr.shape[0],
            frames=[_Frame(0, 0, 0, 0)],
            planes=(focus_depth_um(spec),),
            frame_of_reference=for_uid,
            instance_number=n,
            render=lambda f, arr=arr: arr,
            spacing=spacing,
        )

    if spec.label:
        out.append(single("label", "LABEL", lambda: render_label(spec), (0.05, 0.05), instance_number))
        instance_number += 1
    if spec.overview:
        sp = _OVERVIEW_SPACING_MM
        out.append(single("overview", "OVERVIEW", lambda: _render_overview(spec), (sp, sp), instance_number))
        instance_number += 1
    if spec.thumbnail:
        _, _, f = _thumbnail_geometry(spec)
        out.append(
            single(
                "thumbnail",
                "THUMBNAIL",
                lambda: _render_thumbnail(spec),
                (row_mm * f, col_mm * f),
                instance_number,
            )
        )
        instance_number += 1
    return out


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def write_series(spec: SlideSpec, folder: Path, *, workers: int | None = None) -> list[Path]:
    """Write every instance of the series into ``folder`` and return their paths.

    Names: ``level-<i>.dcm`` (``level-0-part-<k>.dcm`` for concatenation parts, k from 1),
    ``label.dcm``, ``overview.dcm``, ``thumbnail.dcm``. Frames are rendered and encoded on
    ``workers`` threads (default: available cores, max 8); the output does not depend on it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encode = _encoder_for(spec)
    n_workers = workers if workers is not None else _default_workers()
    key = _spec_key(spec)
    paths = []
    for inst in _plan(spec):
        sop_uid = _uid("sop", key, inst.name)
        ds = _wsi_dataset(spec, inst, sop_uid)
        path = folder / f"{inst.name}.dcm"

        def job(f: _Frame, inst: _Instance = inst) -> bytes:
            return encode(inst.render(f))

        _write_instance(
            path,
            ds,
            _ordered_map(job, inst.frames, n_workers),
            transfer_syntax=spec.transfer_syntax,
            offset_table=spec.offset_table,
            fragments_per_frame=spec.fragments_per_frame,
            raw_frame_bytes=inst.frame_rows * inst.frame_cols * spec.samples_per_pixel,
            lossy=spec.transfer_syntax in _LOSSY,
        )
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Non-WSI instances (mixed series)
# --------------------------------------------------------------------------------------------


def write_non_wsi(kind: str, folder: Path, study_uid: str, series_uid: str, seed: int = 0) -> Path:
    """A non-WSI instance in an existing series, to test that the node skips or routes it.

    ``kind``: "ct" (CT Image Storage, 64x64 MONOCHROME2 16-bit signed), "seg" (Segmentation
    Storage, one binary 64x64 frame), "annotation" (Microscopy Bulk Simple Annotations, one point).
    Valid Part 10 files (explicit VR little endian) named ``<kind>-<seed>.dcm``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sop_uid = _uid("non-wsi", kind, study_uid, series_uid, seed)
    for_uid = _uid("non-wsi-frame-of-reference", study_uid, series_uid, seed)
    ds = Dataset()
    rng = np.random.default_rng([seed, 0xC7])
    if kind == "ct":
        sop_class = str(CTImageStorage)
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    elif kind == "seg":
        sop_class = str(SegmentationStorage)
        ds.Modality = "SEG"
        ds.ImageType = ["DERIVED", "PRIMARY"]
    elif kind == "annotation":
        sop_class = MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE
        ds.Modality = "ANN"
    else:
        raise ValueError(f"kind {kind!r} unknown; use 'ct', 'seg' or 'annotation'")
    ds.file_meta = _file_meta(sop_class, sop_uid, str(ExplicitVRLittleEndian))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, seed, study_uid, series_uid)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 900 + ["ct", "seg", "annotation"].index(kind)
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""

    if kind in ("ct", "seg"):
        ds.Rows = 64
        ds.Columns = 64
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    if kind == "ct":
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = ["0", "0", "0"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceThickness = "1"
        ds.PixelSpacing = ["0.5", "0.5"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        yy, xx = np.mgrid[0:64, 0:64]
        phantom = np.where((xx - 32) ** 2 + (yy - 32) ** 2 < 28**2, 40, -1000).astype("<i2")
        phantom += rng.integers(-5, 6, phantom.shape).astype("<i2")
        ds.PixelData = phantom.tobytes()
    elif kind == "seg":
        ds.BitsAllocated = 1
        ds.BitsStored = 1
        ds.HighBit = 0
        ds.PixelRepresentation = 0
        ds.NumberOfFrames = 1
        ds.LossyImageCompression = "00"
        ds.SegmentationType = "BINARY"
        ds.ContentLabel = "SYNTHETIC"
        ds.ContentDescription = "synthetic segmentation"
        ds.ContentCreatorName = ""
        ds.DimensionOrganizationType = "TILED_FULL"
        segment = Dataset()
        segment.SegmentNumber = 1
        segment.SegmentLabel = "tissue"
        segment.SegmentAlgorithmType = "MANUAL"
        segment.SegmentedPropertyCategoryCodeSequence = [_code("91723000", "SCT", "Anatomical Structure")]
        segment.SegmentedPropertyTypeCodeSequence = [_code("85756007", "SCT", "Tissue")]
        ds.SegmentSequence = [segment]
        org = Dataset()
        org.DimensionOrganizationUID = _uid("non-wsi-dimension", sop_uid)
        ds.DimensionOrganizationSequence = [org]
        shared = Dataset()
        pm = Dataset()
        pm.PixelSpacing = ["0.5", "0.5"]
        pm.SliceThickness = "1"
        shared.PixelMeasuresSequence = [pm]
        ds.SharedFunctionalGroupsSequence = [shared]
        frame = Dataset()
        sid = Dataset()
        sid.ReferencedSegmentNumber = 1
        frame.SegmentIdentificationSequence = [sid]
        ds.PerFrameFunctionalGroupsSequence = [frame]
        yy, xx = np.mgrid[0:64, 0:64]
        mask = ((xx - 32) ** 2 + (yy - 32) ** 2 < 20**2).ravel()
        ds.PixelData = np.packbits(mask, bitorder="little").tobytes()
    else:
        ds.ContentLabel = "SYNTHETIC"
        ds.ContentDescription = "synthetic annotation"
        ds.ContentCreatorName = ""
        ds.AnnotationCoordinateType = "2D"
        ds.PixelOriginInterpretation = "VOLUME"
        group = Dataset()
        group.AnnotationGroupNumber = 1
        group.AnnotationGroupUID = _uid("annotation-group", sop_uid)
        group.AnnotationGroupLabel = "nuclei"
        group.AnnotationGroupGenerationType = "MANUAL"
        group.AnnotationPropertyCategoryCodeSequence = [_code("91723000", "SCT", "Anatomical Structure")]
        group.AnnotationPropertyTypeCodeSequence = [_code("84640000", "SCT", "Nucleus")]
        group.GraphicType = "POINT"
        group.NumberOfAnnotations = 1
        group.AnnotationAppliesToAllOpticalPaths = "YES"
        group.AnnotationAppliesToAllZPlanes = "YES"
        group.PointCoordinatesData = struct.pack("<2f", 100.0, 50.0)
        ds.AnnotationGroupSequence = [group]

    path = folder / f"{kind}-{seed}.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


# --------------------------------------------------------------------------------------------
# Command line (demo / benchmark data)
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converter.testkit.synthetic OUT [--width ...]``: write a series for demos/benchmarks."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, default=None)
    for f in dataclasses.fields(SlideSpec):
        flag, default = f"--{f.name.replace('_', '-')}", f.default
        if f.name == "downsamples":
            parser.add_argument(flag, type=int, nargs="+")
        elif f.name == "pixel_spacing_mm":
            parser.add_argument(flag, type=float, nargs=2)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif default is None or isinstance(default, str):
            parser.add_argument(flag, type=str, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    folder, workers = args.pop("folder"), args.pop("workers")
    for name in ("downsamples", "pixel_spacing_mm"):
        if args[name] is None:
            args.pop(name)
        else:
            args[name] = tuple(args[name])
    spec = SlideSpec(**args)
    for p in write_series(spec, folder, workers=workers):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
