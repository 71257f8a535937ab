"""What a synthetic series is: :class:`SlideSpec`, its pyramid geometry and its deterministic UIDs.

Everything else in the testkit is a function of a spec. This module holds the spec itself (and the
validation that rejects impossible combinations), the transfer syntax names it accepts, the level
geometry the writer follows, the seeded choice of missing tiles, the focal planes, the
PhotometricInterpretation that will be written, and the name-based UIDs.

Same spec => byte-identical files: every UID is a name-based UUID (``2.25.<uuid5>``) derived from
the seed and the spec, with a fixed namespace. (``pydicom.uid.generate_uid(prefix=None,
entropy_srcs=...)`` ignores the entropy and returns a random UUID, so it cannot be used.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

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
    "jpeg-lossless": str(JPEGLosslessSV1),  # .70, process 14 selection value 1 (SOF3)
    "explicit": str(ExplicitVRLittleEndian),
    "implicit": str(ImplicitVRLittleEndian),
}
_NATIVE = frozenset({"explicit", "implicit"})
_LOSSY = frozenset({"jpeg", "jpeg-rgb", "jpeg2000"})
_LOSSY_METHOD = {"jpeg": "ISO_10918_1", "jpeg-rgb": "ISO_10918_1", "jpeg2000": "ISO_15444_1"}
_OFFSET_TABLES = frozenset({"basic", "extended", "empty"})
_SUBSAMPLINGS = frozenset({"420", "422", "444"})
#: ``SlideSpec.sample_colour`` values and the syntaxes that can write each (None = the default).
_SAMPLE_COLOURS = {
    "rgb": frozenset({"jpeg2000", "jpeg2000-lossless", "htj2k", "jpegls", "jpeg-lossless", "explicit", "implicit"}),
    "ybr_full": frozenset({"jpeg2000", "jpeg2000-lossless", "htj2k", "jpegls", "jpeg-lossless", "explicit", "implicit"}),
    "mct": frozenset({"jpeg2000", "jpeg2000-lossless", "htj2k"}),
}
#: Fields added after the first release: left out of the spec key while at their default, so
#: the series (UIDs, bytes) of every older spec stay what they were.
_KEY_DEFAULTS = {"sample_colour": None}

# Name-based UIDs: a fixed namespace, so the same inputs give the same UID on every machine.
_UID_NAMESPACE = uuid.UUID("6f1c1f52-3b7e-5a53-9d0c-7e1f5b0d6a11")

# Geometry of the slide coordinate system (mm). ImageOrientationSlide [0,-1,0,-1,0,0]: image
# columns run along -Y (long axis of the glass), image rows along -X; the origin (top-left
# pixel) sits at (_ORIGIN_X_MM, _ORIGIN_Y_MM), label end of the slide at high Y.
_ORIENTATION = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0)
_ORIGIN_X_MM = 20.0
_ORIGIN_Y_MM = 58.0
_SLIDE_X_MM = 25.0
_SLIDE_Y_MM = 75.0
_FOCAL_PLANE_SPACING_UM = 1.0

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
    #: "htj2k" (.201, lossless, RCT), "jpeg-lossless" (.70, SOF3 predictor 1, RGB with an Adobe
    #: marker), "explicit" / "implicit" (native little endian). See also ``sample_colour``.
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
    #: What the encoded components are, for the codecs where that is a choice: "rgb" (no colour
    #: transform: J2K/HTJ2K with the COD multi-component transformation off, JPEG-LS, lossless
    #: JPEG with an Adobe marker, native), "ybr_full" (full-range YCbCr computed before
    #: encoding, codec transform off; lossless JPEG gets a JFIF marker), "mct" (J2K/HTJ2K's own
    #: RCT/ICT, COD MCT = 1). None = the syntax's default (J2K/HTJ2K: mct; others: rgb). The
    #: label follows (RGB, YBR_FULL, YBR_ICT/YBR_RCT) unless ``photometric`` overrides it.
    sample_colour: str | None = None

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
        if self.sample_colour is not None and self.transfer_syntax not in _SAMPLE_COLOURS.get(
            self.sample_colour, ()
        ):
            problems.append(
                f"sample_colour {self.sample_colour!r} cannot be written as {self.transfer_syntax!r}; "
                f"choices: {', '.join(f'{k} ({sorted(v)})' for k, v in _SAMPLE_COLOURS.items())}"
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
    if spec.sample_colour == "rgb":
        return "RGB"
    if spec.sample_colour == "ybr_full":
        return "YBR_FULL"
    if ts == "jpeg":
        return "YBR_FULL" if spec.subsampling == "444" else "YBR_FULL_422"
    if ts == "jpeg2000":
        return "YBR_ICT"
    if ts in ("jpeg2000-lossless", "htj2k"):
        return "YBR_RCT"
    return "RGB"  # jpeg-rgb (Adobe, no transform), jpegls (no colour transform), native


# --------------------------------------------------------------------------------------------
# Deterministic identifiers
# --------------------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    """A name-based UUID as DICOM UID (PS3.5 B.2): identical inputs, identical UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}"


def _spec_key(spec: SlideSpec) -> str:
    """Digest of every field, so that different specs never share a series.

    The text hashed is the dataclass repr, minus the later fields still at their default
    (``_KEY_DEFAULTS``), so adding a field never changes the series of an existing spec.
    """
    parts = [
        f"{f.name}={getattr(spec, f.name)!r}"
        for f in dataclasses.fields(spec)
        if not (f.name in _KEY_DEFAULTS and getattr(spec, f.name) == _KEY_DEFAULTS[f.name])
    ]
    text = f"{type(spec).__qualname__}({', '.join(parts)})"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def series_uids(spec: SlideSpec) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) the spec produces.

    The study depends on the seed only (one synthetic patient per seed); the series on the whole
    spec, so two variants written into the same node never merge into one series.
    """
    return _uid("study", spec.seed), _uid("series", _spec_key(spec))
