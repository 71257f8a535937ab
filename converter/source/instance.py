"""One DICOM instance of a slide, described from its header alone.

Reading headers only (never the pixel data) keeps scanning thousands of files
cheap. Everything the series model, tile index and frame reader need later is
captured here as plain, picklable values, so a conversion job can be shipped
to another process without re-reading the headers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from converter.errors import InputError, NotDicomError, NotWsiError

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
    extended_offsets: tuple[int, ...] | None = None
    extended_lengths: tuple[int, ...] | None = None


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

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def tiles_across(self) -> int:
        return -(-self.image_width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.image_height // self.tile_height)


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


def _frame_positions(ds: Dataset, tile_w: int, tile_h: int) -> tuple[FramePosition, ...] | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    positions = []
    for item in per_frame:
        plane = _first(item.get("PlanePositionSlideSequence"))
        if plane is None:
            return None
        col = plane.get("ColumnPositionInTotalImagePixelMatrix")
        row = plane.get("RowPositionInTotalImagePixelMatrix")
        if col is None or row is None:
            return None
        z = plane.get("ZOffsetInSlideCoordinateSystem")
        path_item = _first(item.get("OpticalPathIdentificationSequence"))
        path = str(path_item.get("OpticalPathIdentifier")) if path_item is not None else None
        positions.append(FramePosition(int(col) - 1, int(row) - 1, float(z) if z is not None else None, path))
    return tuple(positions)


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


def _read_pixel_data_location(fp: Any, implicit: bool, extended: tuple | None) -> PixelDataLocation | None:
    start = fp.tell()
    header = fp.read(8)
    if len(header) < 8:
        return None
    group, elem = struct.unpack("<HH", header[:4])
    if (group, elem) != (0x7FE0, 0x0010):
        return None
    if implicit:
        (length,) = struct.unpack("<I", header[4:8])
        offset = start + 8
    else:
        vr = header[4:6]
        if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            (length,) = struct.unpack("<I", fp.read(4))
            offset = start + 12
        else:
            (length,) = struct.unpack("<H", header[6:8])
            offset = start + 8
    encapsulated = length == 0xFFFFFFFF
    offsets, lengths = extended if extended else (None, None)
    return PixelDataLocation(
        offset=offset,
        length=None if encapsulated else length,
        encapsulated=encapsulated,
        extended_offsets=offsets,
        extended_lengths=lengths,
    )


def read_dataset_header(path: str | Path) -> tuple[Dataset, PixelDataLocation | None]:
    """Read a DICOM file's header and locate its pixel data without loading it."""
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            # defer_size: a corrupt length field must not make us read hundreds of MB into memory.
            ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size="8 MB")
            ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
            implicit = ts == "1.2.840.10008.1.2"
            extended = None
            if ds.get("ExtendedOffsetTable") is not None and ds.get("ExtendedOffsetTableLengths") is not None:
                raw_o, raw_l = bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths)
                extended = (
                    tuple(struct.unpack(f"<{len(raw_o) // 8}Q", raw_o)),
                    tuple(struct.unpack(f"<{len(raw_l) // 8}Q", raw_l)),
                )
            location = _read_pixel_data_location(fp, implicit, extended)
    except InvalidDicomError as exc:
        raise NotDicomError(
            f"{path}: not a DICOM file (no DICM marker or file meta header).",
            "Remove it from the input, or check that the sender wrote a complete DICOM Part 10 file.",
        ) from exc
    except (EOFError, OSError, ValueError, struct.error, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc}); the file is probably truncated or corrupt.",
            "Send or copy the file again.",
        ) from exc
    return ds, location


def instance_from_dataset(ds: Dataset, path: str, location: PixelDataLocation | None) -> WsiInstance:
    """Describe a WSI instance; raise NotWsiError for anything else."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != WSI_SOP_CLASS:
        raise NotWsiError(
            f"{path}: not a whole-slide image but {sop_class_name(sop_class) or 'an instance without SOPClassUID'}"
            f" (SOPInstanceUID {ds.get('SOPInstanceUID', '?')}); it was skipped.",
            "Send only VL Whole Slide Microscopy Image instances to wsi-node, or ignore this message if the file was sent by mistake.",
        )
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
        frame_positions=_frame_positions(ds, tile_w, tile_h),
        icc_profile=_icc_profile(ds),
        pixel_data=location,
        metadata=_metadata(ds),
    )


def read_instance(path: str | Path) -> WsiInstance:
    """Read one file's header; raise a converter error naming the file if it is unusable."""
    ds, location = read_dataset_header(path)
    return instance_from_dataset(ds, str(path), location)
