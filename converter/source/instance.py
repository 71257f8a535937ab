"""One DICOM instance of a slide, described from its header alone.

Reading headers only (never the pixel data) keeps scanning thousands of files
cheap. Everything the series model, tile index and frame reader need later is
captured here as plain, picklable values, so a conversion job can be shipped
to another process without re-reading the headers.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from converter.errors import InputError, InstanceRefused, NotDicomError, NotWsiError
from converter.source.header_scan import KEPT_TAGS, HeaderScan, scan_header
from converter.source.validate import DEFAULT_LIMITS, Limits, refusal, validate

log = logging.getLogger("wsi_node.source")

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
FLAVORS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")

# SOP classes people commonly find next to slides, for readable messages.
_SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.91.1": "Microscopy Bulk Simple Annotations Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image Storage",
}


def sop_class_name(uid: str) -> str:
    return _SOP_CLASS_NAMES.get(uid, uid)


@dataclass(frozen=True)
class FramePosition:
    """Where one frame sits: 0-based pixel origin, focal plane z, optical path."""

    column: int
    row: int
    z: float | None = None
    optical_path: str | None = None


@dataclass(frozen=True)
class PixelDataLocation:
    """Where the PixelData element's value starts in the file, and its shape."""

    offset: int
    """File offset of the first byte of the value (after tag, VR and length)."""
    length: int | None
    """Defined length (native pixel data) or None (encapsulated)."""
    encapsulated: bool
    extended_offsets: Sequence[int] | None = field(default=None, hash=False)
    """array('Q') from the header scan (8 bytes a frame), relative to the first fragment item."""
    extended_lengths: Sequence[int] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class WsiInstance:
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    flavor: str
    flavor_from_image_type: bool
    transfer_syntax: str
    tile_width: int
    tile_height: int
    image_width: int
    image_height: int
    number_of_frames: int
    samples_per_pixel: int
    photometric: str
    planar_configuration: int
    bits_allocated: int
    dimension_organization: str | None
    focal_planes: int
    optical_paths: tuple[str, ...]
    pixel_spacing: tuple[float, float] | None
    """(row spacing, column spacing) in mm, as DICOM orders it."""
    concatenation_uid: str | None
    concatenation_frame_offset: int
    in_concatenation_number: int | None
    in_concatenation_total: int | None
    frame_positions: tuple[FramePosition, ...] | None
    icc_profile: bytes | None = field(default=None, repr=False)
    pixel_data: PixelDataLocation | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    pixel_origin: str | None = None
    """ImageType value 1, ORIGINAL or DERIVED (PS3.3 C.8.12.4.1.1): tells a missing level 0 from a small pyramid."""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def tiles_across(self) -> int:
        return -(-self.image_width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.image_height // self.tile_height)


def _pixel_origin(ds: Dataset) -> str | None:
    """ORIGINAL for a level as scanned, DERIVED for a level made by resampling another, None when the header
    cannot tell (such a level never holds a series back).

    ImageType (PS3.3 C.8.12.4.1.1): value 1 ORIGINAL/DERIVED; for VOLUME images value 4 NONE (not
    resampled) or RESAMPLED. Real writers label a converted level 0 DERIVED/PRIMARY/VOLUME/NONE
    (Google's wsi2dcm does: the pixels came from another file format, not from resampling), so value 4
    decides where it is present and value 1 only where it is not.
    """
    image_type = ds.get("ImageType")
    if not image_type:
        return None
    values = [str(v).strip().upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]
    if len(values) >= 4 and values[2] == "VOLUME" and values[3] in ("NONE", "RESAMPLED"):
        return "ORIGINAL" if values[3] == "NONE" else "DERIVED"
    return values[0] if values[0] == "ORIGINAL" else None


def _first(seq: Any) -> Dataset | None:
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    measures = _first(shared.get("PixelMeasuresSequence")) if shared is not None else None
    spacing = measures.get("PixelSpacing") if measures is not None else None
    if not spacing:
        spacing = ds.get("PixelSpacing")
    if spacing and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
        return float(spacing[0]), float(spacing[1])
    # Fall back to the imaged volume, which the WSI module requires.
    width_mm, height_mm = ds.get("ImagedVolumeWidth"), ds.get("ImagedVolumeHeight")
    cols, rows = ds.get("TotalPixelMatrixColumns"), ds.get("TotalPixelMatrixRows")
    if width_mm and height_mm and cols and rows:
        return float(height_mm) / int(rows), float(width_mm) / int(cols)
    return None


def _flavor(ds: Dataset) -> tuple[str, bool]:
    image_type = ds.get("ImageType")
    if image_type and len(image_type) >= 3 and str(image_type[2]).upper() in FLAVORS:
        return str(image_type[2]).upper(), True
    # No usable ImageType (some writers omit it): infer from the WSI module.
    tiled = int(ds.get("NumberOfFrames", 1) or 1) > 1 or (
        int(ds.get("TotalPixelMatrixColumns", 0) or 0) > int(ds.get("Columns", 0) or 0)
    )
    if tiled:
        return "VOLUME", False
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "LABEL", False
    if str(ds.get("SpecimenLabelInImage", "")).upper() == "YES":
        return "OVERVIEW", False
    return "VOLUME", False


def _icc_profile(ds: Dataset) -> bytes | None:
    path = _first(ds.get("OpticalPathSequence"))
    if path is not None and path.get("ICCProfile"):
        return bytes(path.ICCProfile)
    if ds.get("ICCProfile"):
        return bytes(ds.ICCProfile)
    return None


def _metadata(ds: Dataset) -> dict[str, str]:
    """Key descriptive values for the report and the TIFF description (no patient data)."""
    keys = (
        "Manufacturer",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "SoftwareVersions",
        "ContainerIdentifier",
        "AcquisitionDateTime",
        "StudyDate",
        "SeriesNumber",
        "SeriesDescription",
    )
    out = {k: str(ds.get(k)) for k in keys if ds.get(k) not in (None, "")}
    path = _first(ds.get("OpticalPathSequence"))
    if path is not None and path.get("ObjectiveLensPower"):
        out["ObjectiveLensPower"] = str(path.ObjectiveLensPower)
    return out


_PYDICOM_LOCK = threading.Lock()
"""warnings.catch_warnings changes process-wide state: one header read at a time inside it."""


def _fresh_lock() -> None:
    global _PYDICOM_LOCK
    _PYDICOM_LOCK = threading.Lock()  # a fork while another thread held it must not leave the child locked


os.register_at_fork(after_in_child=_fresh_lock)


def read_dataset_header(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Dataset, HeaderScan]:
    """Read a DICOM file's header within the caps of `limits`, and summarise its pixel data without loading it.

    The element headers are walked first (converter.source.header_scan: header size, nesting,
    truncation, fragments, per-frame positions), then pydicom parses only the top-level attributes
    wsi-node uses. pydicom's warnings are collected and logged as one line per file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            fp.seek(128)
            if fp.read(4) != b"DICM":
                raise InvalidDicomError("no DICM marker")
            scan = scan_header(fp, limits.max_header_bytes, limits.max_sequence_depth)
            fp.seek(0)
            with _PYDICOM_LOCK, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=list(KEPT_TAGS))
                for keyword in ("SOPInstanceUID", "SOPClassUID"):
                    ds.get(keyword)
            if caught:
                log.info("%s: %d warning(s) from pydicom reading SOP instance %s; first: %s", path.name, len(caught),
                         _uid_text(ds), str(caught[0].message)[:200])
    except InvalidDicomError as exc:
        raise NotDicomError(
            f"{path}: not a DICOM file (no DICM marker or file meta header).",
            "Remove it from the input, or check that the sender wrote a complete DICOM Part 10 file.",
        ) from exc
    except InstanceRefused as exc:
        raise InstanceRefused(f"{path}: {exc.problem}", exc.fix, exc.status, exc.reason) from exc
    except (EOFError, OSError, ValueError, struct.error, KeyError, TypeError, RecursionError, AttributeError) as exc:
        raise InstanceRefused(
            f"{path}: cannot read the DICOM header ({type(exc).__name__}: {str(exc)[:200]}); the file is probably truncated or corrupt.",
            "Send or copy the file again.", "invalid", "the DICOM header cannot be parsed",
        ) from exc
    return ds, scan


def _uid_text(ds: Dataset) -> str:
    try:
        return str(ds.get("SOPInstanceUID", "?"))[:64]
    except Exception:
        return "?"


def _location(scan: HeaderScan) -> PixelDataLocation | None:
    if scan.pixel_offset is None:
        return None
    return PixelDataLocation(scan.pixel_offset, scan.pixel_length, scan.encapsulated, scan.extended_offsets, scan.extended_lengths)


def _frame_positions(scan: HeaderScan) -> tuple[FramePosition, ...] | None:
    """Per-frame Plane Position (Slide), 0-based; None unless every frame has a column and a row."""
    if not scan.positions or any(p.column is None or p.row is None for p in scan.positions):
        return None
    return tuple(FramePosition(p.column - 1, p.row - 1, p.z, p.optical_path) for p in scan.positions)


def check_sop_class(ds: Dataset, path: str) -> None:
    """Raise NotWsiError unless the instance is a VL Whole Slide Microscopy Image (PS3.4 B.5)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != WSI_SOP_CLASS:
        raise NotWsiError(
            f"{path}: not a whole-slide image but {sop_class_name(sop_class) or 'an instance without SOPClassUID'}"
            f" (SOPInstanceUID {ds.get('SOPInstanceUID', '?')}); it was skipped.",
            "Send only VL Whole Slide Microscopy Image instances to wsi-node, or ignore this message if the file was sent by mistake.",
        )


def describe_instance(ds: Dataset, path: str, scan: HeaderScan, limits: Limits = DEFAULT_LIMITS) -> WsiInstance:
    """Check the SOP class (NotWsiError) and every rule of converter.source.validate (InstanceRefused), then describe."""
    check_sop_class(ds, path)
    problems = validate(ds, scan, limits)
    if problems:
        raise refusal(problems, path)
    return instance_from_dataset(ds, path, scan)


def instance_from_dataset(ds: Dataset, path: str, scan: HeaderScan) -> WsiInstance:
    """Describe a WSI instance whose header passed describe_instance's checks."""
    check_sop_class(ds, path)
    sop_class = str(ds.SOPClassUID)
    location = _location(scan)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns") if not ds.get(k)]
    if missing:
        raise InputError(
            f"{path}: whole-slide image without {', '.join(missing)}.",
            "The sender wrote an invalid instance; fix the exporting system or re-export the slide.",
        )
    if location is None:
        raise InputError(f"{path}: whole-slide image without pixel data.", "Send or copy the file again.")
    tile_w, tile_h = int(ds.Columns), int(ds.Rows)
    flavor, from_type = _flavor(ds)
    image_w = int(ds.get("TotalPixelMatrixColumns") or tile_w)
    image_h = int(ds.get("TotalPixelMatrixRows") or tile_h)
    concat_uid = ds.get("ConcatenationUID")
    paths = tuple(str(p.get("OpticalPathIdentifier", i)) for i, p in enumerate(ds.get("OpticalPathSequence") or []))
    return WsiInstance(
        path=str(path),
        sop_class_uid=sop_class,
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        frame_of_reference_uid=str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None,
        flavor=flavor,
        flavor_from_image_type=from_type,
        pixel_origin=_pixel_origin(ds),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        tile_width=tile_w,
        tile_height=tile_h,
        image_width=image_w,
        image_height=image_h,
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        bits_allocated=int(ds.get("BitsAllocated", 8) or 8),
        dimension_organization=str(ds.DimensionOrganizationType) if ds.get("DimensionOrganizationType") else None,
        focal_planes=int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1),
        optical_paths=paths or ("1",),
        pixel_spacing=_pixel_spacing(ds),
        concatenation_uid=str(concat_uid) if concat_uid else None,
        concatenation_frame_offset=int(ds.get("ConcatenationFrameOffsetNumber", 0) or 0),
        in_concatenation_number=int(ds.InConcatenationNumber) if ds.get("InConcatenationNumber") else None,
        in_concatenation_total=int(ds.InConcatenationTotalNumber) if ds.get("InConcatenationTotalNumber") else None,
        frame_positions=_frame_positions(scan),
        icc_profile=_icc_profile(ds),
        pixel_data=location,
        metadata=_metadata(ds),
    )


def read_instance(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> WsiInstance:
    """Read and check one file's header; raise a converter error (an InputError) naming the file if it is unusable.

    The same checks as a receiver runs before acknowledging (scp.storage), so a dropped file is
    quarantined for the same reason a pushed one is refused.
    """
    ds, scan = read_dataset_header(path, limits)
    return describe_instance(ds, str(path), scan, limits)
