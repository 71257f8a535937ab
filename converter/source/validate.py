"""What a VL Whole Slide Microscopy Image instance must satisfy before this node acknowledges it.

Every value the tracker and the converter later rely on is checked here, once, before a success
status is sent: a value that would crash them or produce a wrong slide later (NumberOfFrames -5 or
"abc", a 10^9-pixel matrix, Rows written as LO, pixel data shorter than its frames) is a refusal
now. The rules come from PS3.3 A.32.8 (VL Whole Slide Microscopy Image IOD), C.8.12.4 (Whole Slide
Microscopy Image module), C.7.6.3 (Image Pixel), C.7.6.6 (Multi-frame), C.7.6.16 (Multi-frame
Functional Groups), C.7.6.17 (Multi-frame Dimension), PS3.5 6.2 (value representations), 8.1.1
(native pixel data) and A.4 (encapsulated pixel data), plus what the converter supports.

Pure: the rules read a pydicom Dataset (top-level attributes only) and the HeaderScan summary of
the file (converter.source.header_scan); they return a list of Problems, each naming the attribute,
with a status for the receivers and a one-line reason of at most 64 characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from converter.errors import InstanceRefused
from converter.source.header_scan import HeaderScan

# The same set as converter.codecs.frames.SUPPORTED_TRANSFER_SYNTAXES (a test checks it); not
# imported from there because frames imports converter.source.instance, which imports this module.
SUPPORTED_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1",  # native, PS3.5 A.1, A.2
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
})
NATIVE_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
# PS3.3 C.8.12.4.1.5 (WSI Photometric Interpretation) plus YBR_FULL, which JPEG 4:4:4 writers use.
PHOTOMETRIC = {"MONOCHROME2": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_ICT": 3, "YBR_RCT": 3}
MAX_FRAME_SIDE = 65535  # Rows and Columns are US (PS3.3 C.7.6.3)
MAX_GRID_TILES = 4_000_000
"""Tile positions of one level (a 200,000 x 100,000 px slide at 256 px has 305,000)."""
MB = 1 << 20
CONVERSION_THREADS = 2
"""Threads per conversion the budget assumes at receipt (the converter's default)."""
_PRIORITY = ("invalid", "too-large", "not-wsi", "mismatch")
"""The first problem sets the status: what cannot be parsed, then what is over a budget, then IOD violations."""


@dataclass(frozen=True)
class Limits:
    """The budgets an instance is checked against (settings max_header_mb, max_sequence_depth, conversion_memory_mb)."""

    max_header_bytes: int = 16 << 20
    max_sequence_depth: int = 16
    conversion_memory_mb: int = 4096


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Problem:
    status: str
    """'invalid' (cannot be understood: 0xC000), 'mismatch' (IOD violation or unsupported: 0xA900), 'too-large' (0xA700)."""
    attribute: str
    reason: str
    """At most 64 characters: the ErrorComment (PS3.7 E.1, VR LO: 64 characters, PS3.5 6.2) and the STOW failure text."""
    detail: str


def estimate_memory_bytes(tile_width: int, tile_height: int, samples: int, threads: int = CONVERSION_THREADS) -> int:
    """The memory a conversion of a level with frames of this size needs: the formula of the executor's
    budget (converter.executors.local.conversion_budget, without its cap; a test checks they agree):
    re-encoding works in bounded blocks, so memory grows with the frame size, not the slide's."""
    block = 2048 * 2048 * max(1, samples)
    frame = max(1, tile_width) * max(1, tile_height) * max(1, samples)
    return 256 * MB + max(1, threads) * (16 * MB + 4 * block + 2 * frame)


class _Rules:
    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.problems: list[Problem] = []

    def add(self, status: str, attribute: str, reason: str, detail: str) -> None:
        self.problems.append(Problem(status, attribute, reason[:64], detail))

    def integer(self, keyword: str, vrs: tuple[str, ...], required: bool, low: int, high: int | None = None,
                clause: str = "") -> int | None:
        """An integer attribute: present if required, of an integer VR, one value, parseable, within range."""
        if keyword not in self.ds:
            if required:
                self.add("mismatch", keyword, f"missing {keyword}", f"{keyword} is missing; it is required ({clause}).")
            return None
        try:
            elem = self.ds[keyword]
            value: Any = elem.value
        except Exception as exc:  # pydicom raises many types for malformed values
            self.add("invalid", keyword, f"{keyword} cannot be read", f"{keyword} cannot be read ({type(exc).__name__}: {exc}).")
            return None
        if elem.VR not in vrs:
            self.add("invalid", keyword, f"{keyword} has VR {elem.VR}, not {vrs[0]}",
                     f"{keyword} is written with VR {elem.VR}; PS3.6 defines {'/'.join(vrs)} (PS3.5 6.2).")
            return None
        if value is None or value == "":
            if required:
                self.add("mismatch", keyword, f"{keyword} is empty", f"{keyword} is empty; it is required ({clause}).")
            return None
        if isinstance(value, (list, tuple)) or getattr(elem, "VM", 1) != 1:
            self.add("invalid", keyword, f"{keyword} has several values", f"{keyword} has {elem.VM} values; it takes one.")
            return None
        try:
            number = int(str(value).strip()) if isinstance(value, str) else int(value)
            if isinstance(value, float) and value != number:
                raise ValueError(value)
        except (TypeError, ValueError):
            self.add("invalid", keyword, f"{keyword} {str(value)[:20]!r} is not an integer",
                     f"{keyword} is {str(value)[:40]!r}, which is not an integer ({elem.VR}, PS3.5 6.2).")
            return None
        if number < low or (high is not None and number > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            self.add("mismatch", keyword, f"{keyword} {number} must be {bound}", f"{keyword} is {number}; it must be {bound} ({clause}).")
            return None
        return number


def validate(ds: Dataset, scan: HeaderScan, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """Every problem of a WSI instance's header and pixel data layout; empty: acknowledge it."""
    r = _Rules(ds)
    if scan.transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        r.add("invalid", "TransferSyntaxUID", f"transfer syntax {scan.transfer_syntax} not supported"[:64],
              f"the transfer syntax {scan.transfer_syntax} is not one the converter decodes.")
    us, ul = ("US",), ("UL",)
    rows = r.integer("Rows", us, True, 1, MAX_FRAME_SIDE, "PS3.3 C.7.6.3")
    cols = r.integer("Columns", us, True, 1, MAX_FRAME_SIDE, "PS3.3 C.7.6.3")
    spp = r.integer("SamplesPerPixel", us, True, 1, None, "PS3.3 C.7.6.3")
    bits = r.integer("BitsAllocated", us, True, 1, None, "PS3.3 C.7.6.3")
    stored = r.integer("BitsStored", us, False, 1, None, "PS3.3 C.7.6.3")
    r.integer("PlanarConfiguration", us, False, 0, 1, "PS3.3 C.7.6.3.1.3")
    frames = r.integer("NumberOfFrames", ("IS",), True, 1, None, "PS3.3 C.7.6.6")
    width = r.integer("TotalPixelMatrixColumns", ul, False, 1, None, "PS3.3 C.8.12.4")
    height = r.integer("TotalPixelMatrixRows", ul, False, 1, None, "PS3.3 C.8.12.4")
    planes = r.integer("TotalPixelMatrixFocalPlanes", ul, False, 1, None, "PS3.3 C.8.12.4") or 1
    paths = r.integer("NumberOfOpticalPaths", ul, False, 1, None, "PS3.3 C.8.12.4")
    offset = r.integer("ConcatenationFrameOffsetNumber", ul, False, 0, None, "PS3.3 C.7.6.16.2.2") or 0
    r.integer("InConcatenationNumber", us, False, 1, None, "PS3.3 C.7.6.16.2.2")
    r.integer("InConcatenationTotalNumber", us, False, 1, None, "PS3.3 C.7.6.16.2.2")
    if spp is not None and spp not in (1, 3):
        r.add("mismatch", "SamplesPerPixel", f"SamplesPerPixel {spp} not supported (1 or 3)",
              f"SamplesPerPixel is {spp}; wsi-node converts 1 (MONOCHROME2) or 3 (colour) samples.")
        spp = None
    if bits is not None and bits != 8:
        r.add("mismatch", "BitsAllocated", f"BitsAllocated {bits} not supported (8 only)",
              f"BitsAllocated is {bits}; wsi-node converts 8-bit brightfield slides only.")
        bits = None
    if stored is not None and bits is not None and stored > bits:
        r.add("mismatch", "BitsStored", f"BitsStored {stored} > BitsAllocated {bits}", "BitsStored exceeds BitsAllocated (PS3.3 C.7.6.3).")
    _photometric(r, spp)
    if None in (rows, cols, frames):
        return _sorted(r.problems)
    if width is None or height is None:
        if frames > 1:
            r.add("mismatch", "TotalPixelMatrixColumns", "tiled image without TotalPixelMatrix size",
                  f"{frames} frames but no TotalPixelMatrixColumns/Rows (type 1, PS3.3 C.8.12.4).")
            return _sorted(r.problems)
        width, height = width or cols, height or rows
    _grid(r, scan, rows, cols, frames, width, height, planes, paths or _path_count(ds), offset, limits, spp)
    if spp is not None and bits is not None:
        _pixel_data(r, scan, rows * cols * spp * (bits // 8), frames)
    return _sorted(r.problems)


def _path_count(ds: Dataset) -> int:
    try:
        return max(1, len(ds.get("OpticalPathSequence") or ()))
    except Exception:
        return 1


def _photometric(r: _Rules, spp: int | None) -> None:
    value = r.ds.get("PhotometricInterpretation")
    text = str(value or "").strip().upper()
    if not text:
        r.add("mismatch", "PhotometricInterpretation", "missing PhotometricInterpretation",
              "PhotometricInterpretation is missing (type 1, PS3.3 C.7.6.3).")
    elif text not in PHOTOMETRIC:
        r.add("mismatch", "PhotometricInterpretation", f"PhotometricInterpretation {text[:16]} not supported",
              f"PhotometricInterpretation is {text[:32]!r}; a WSI image uses one of {', '.join(PHOTOMETRIC)} (PS3.3 C.8.12.4.1.5).")
    elif spp is not None and PHOTOMETRIC[text] != spp:
        r.add("mismatch", "PhotometricInterpretation", f"{text} with SamplesPerPixel {spp}",
              f"PhotometricInterpretation {text} needs SamplesPerPixel {PHOTOMETRIC[text]}, not {spp} (PS3.3 C.7.6.3.1.2).")


def _grid(r: _Rules, scan: HeaderScan, rows: int, cols: int, frames: int, width: int, height: int, planes: int,
          paths: int, offset: int, limits: Limits, spp: int | None) -> None:
    """The memory budget, then the frames against the tile grid (PS3.3 C.7.6.17.3, C.8.12.4)."""
    across, down = -(-width // cols), -(-height // rows)
    need = estimate_memory_bytes(cols, rows, spp or 3) // MB
    if need > limits.conversion_memory_mb:
        r.add("too-large", "Columns", f"{cols}x{rows} px frames need {need} MB > {limits.conversion_memory_mb} MB",
              f"frames of {cols} x {rows} px need about {need} MB to convert, over the budget of"
              f" {limits.conversion_memory_mb} MB (conversion_memory_mb).")
        return
    if across * down > MAX_GRID_TILES:
        r.add("too-large", "TotalPixelMatrixRows", f"{width}x{height} px is over {MAX_GRID_TILES} tiles",
              f"TotalPixelMatrixColumns x Rows {width} x {height} makes {across * down} tiles of {cols}x{rows}; the limit is {MAX_GRID_TILES}.")
        return
    grid = across * down * planes * paths
    organisation = str(r.ds.get("DimensionOrganizationType", "") or "").upper()
    sparse = organisation == "TILED_SPARSE" or (organisation != "TILED_FULL" and scan.positions is not None)
    if sparse:
        _positions(r, scan, frames, width, height, cols, rows, grid)
        return
    concatenated = "ConcatenationUID" in r.ds
    # TILED_FULL: every tile of every focal plane and optical path, in the implicit order (PS3.3 C.7.6.17.3).
    if concatenated and offset + frames > grid:
        r.add("mismatch", "NumberOfFrames", f"frames {offset + 1}-{offset + frames} beyond the {grid} of the grid",
              f"ConcatenationFrameOffsetNumber {offset} + NumberOfFrames {frames} exceed the {grid} frames of the TILED_FULL grid"
              f" ({across} x {down} tiles x {planes} planes x {paths} paths).")
    elif not concatenated and frames != grid:
        r.add("mismatch", "NumberOfFrames", f"NumberOfFrames {frames} but the grid has {grid} tiles",
              f"NumberOfFrames is {frames}, but TotalPixelMatrixColumns/Rows {width} x {height} in {cols}x{rows} tiles"
              f" x {planes} focal planes x {paths} optical paths make {grid} TILED_FULL frames (PS3.3 C.7.6.17.3).")


def _positions(r: _Rules, scan: HeaderScan, frames: int, width: int, height: int, cols: int, rows: int, grid: int) -> None:
    """TILED_SPARSE: one Plane Position (Slide) per frame, on the grid, inside the matrix (PS3.3 C.7.6.16, C.8.12.6.1)."""
    if frames > grid:
        r.add("mismatch", "NumberOfFrames", f"NumberOfFrames {frames} > {grid} tile positions",
              f"NumberOfFrames is {frames}, more than the {grid} tile positions of the matrix.")
    if scan.positions is None:
        r.add("mismatch", "PerFrameFunctionalGroupsSequence", "TILED_SPARSE without per-frame positions",
              "TILED_SPARSE frames need PerFrameFunctionalGroupsSequence with Plane Position (Slide) (PS3.3 C.8.12.6.1).")
        return
    if len(scan.positions) != frames:
        r.add("mismatch", "PerFrameFunctionalGroupsSequence", f"{len(scan.positions)} per-frame items for {frames} frames",
              f"PerFrameFunctionalGroupsSequence has {len(scan.positions)} items; NumberOfFrames is {frames} (PS3.3 C.7.6.16.1.2).")
        return
    for i, p in enumerate(scan.positions, 1):
        if p.column is None or p.row is None:
            r.add("mismatch", "PlanePositionSlideSequence", f"frame {i} has no position",
                  f"frame {i} has no Column/RowPositionInTotalImagePixelMatrix (PS3.3 C.8.12.6.1).")
        elif not (1 <= p.column <= width and 1 <= p.row <= height) or (p.column - 1) % cols or (p.row - 1) % rows:
            r.add("mismatch", "PlanePositionSlideSequence", f"frame {i} at {p.column},{p.row} is off the tile grid",
                  f"frame {i} starts at column {p.column}, row {p.row}: not a {cols}x{rows} tile of the {width} x {height} matrix.")
        else:
            continue
        return


def _pixel_data(r: _Rules, scan: HeaderScan, frame_bytes: int, frames: int) -> None:
    """Pixel data that can hold every frame: native length (PS3.5 8.1.1), fragments and offset tables (PS3.5 A.4)."""
    if scan.pixel_offset is None:
        r.add("mismatch", "PixelData", "no PixelData", "the instance has no PixelData (7FE0,0010) (PS3.3 C.7.6.3).")
        return
    native = scan.transfer_syntax in NATIVE_TRANSFER_SYNTAXES
    if native != (not scan.encapsulated):
        r.add("invalid", "PixelData", "PixelData encoding does not match the transfer syntax",
              f"PixelData is {'encapsulated' if scan.encapsulated else 'native'} in transfer syntax {scan.transfer_syntax} (PS3.5 A.4).")
        return
    if native:
        need = frame_bytes * frames
        if scan.pixel_length < need:
            r.add("invalid", "PixelData", f"PixelData {scan.pixel_length} bytes < {need} needed",
                  f"PixelData holds {scan.pixel_length} bytes; {frames} frames of {frame_bytes} bytes need {need} (PS3.5 8.1.1).")
        elif scan.pixel_length > need + 1:
            r.add("mismatch", "PixelData", f"PixelData {scan.pixel_length} bytes > {need} declared",
                  f"PixelData holds {scan.pixel_length} bytes; {frames} frames of {frame_bytes} bytes are {need} (PS3.5 8.1.1).")
        return
    fragments = len(scan.fragment_offsets)
    if fragments < frames:
        r.add("invalid", "PixelData", f"{fragments} fragments cannot hold {frames} frames",
              f"the encapsulated PixelData has {fragments} fragments; each of the {frames} frames needs at least one (PS3.5 A.4).")
        return
    bot = scan.basic_offsets
    if bot and (len(bot) != frames or bot[0] != 0 or not set(bot) <= set(scan.fragment_offsets)):
        r.add("invalid", "PixelData", "Basic Offset Table does not match the frames",
              f"the Basic Offset Table has {len(bot)} entries for {frames} frames, or points between fragments (PS3.5 A.4).")
    eot, eotl = scan.extended_offsets, scan.extended_lengths
    if eot is None and eotl is None:
        return
    if eot is scan.fragment_offsets and eotl is scan.fragment_lengths and not bot and len(eot) == frames:
        return  # the header scan matched every item to the table (converter.source.item_table)
    lengths = dict(zip(scan.fragment_offsets, scan.fragment_lengths))
    if eot is None or eotl is None or bot or len(eot) != frames or len(eotl) != frames or fragments != frames:
        r.add("invalid", "ExtendedOffsetTable", "Extended Offset Table does not match the frames",
              f"ExtendedOffsetTable/Lengths have {len(eot or ())}/{len(eotl or ())} entries for {frames} frames in {fragments}"
              " fragments; they need one each, one fragment per frame and an empty Basic Offset Table (PS3.3 C.7.6.3.1.8).")
    elif any(lengths.get(o) != n for o, n in zip(eot, eotl)):
        r.add("invalid", "ExtendedOffsetTable", "Extended Offset Table points between fragments",
              "an ExtendedOffsetTable entry is not a fragment start or its length differs (PS3.3 C.7.6.3.1.8).")


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: _PRIORITY.index(p.status))


def refusal(problems: list[Problem], name: str) -> InstanceRefused:
    """One error for a list of problems: the most basic one sets the status and the reason."""
    first = problems[0]
    details = "; ".join(p.detail for p in problems)
    return InstanceRefused(f"{name}: {details}", "Fix the sending system or re-export the slide; wsi-node cannot use this instance.",
                           first.status, first.reason, tuple(p.detail for p in problems))
