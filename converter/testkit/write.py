"""Writing series: :func:`write_series` (a whole WSI series) and :func:`write_non_wsi` (mixed series).

:func:`write_series` follows the plan (:mod:`converter.testkit.plan`): for each instance, its
header (:mod:`converter.testkit.dataset`), its frames rendered and encoded on a small thread pool
(libjpeg, OpenJPEG and most numpy loops release the GIL), streamed to disk
(:mod:`converter.testkit.pixeldata`). The output does not depend on the number of threads.
:func:`write_non_wsi` adds a CT, segmentation or annotation instance to a series, to test that
the node skips or routes what is not a slide.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage

from converter.testkit.dataset import _code, _file_meta, _patient_study, _wsi_dataset
from converter.testkit.encode import _encoder_for
from converter.testkit.pixeldata import _write_instance
from converter.testkit.plan import _Frame, _Instance, _plan
from converter.testkit.spec import _LOSSY, SlideSpec, _spec_key, _uid

MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE = "1.2.840.10008.5.1.4.1.1.91.1"


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
