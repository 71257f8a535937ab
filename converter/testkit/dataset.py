"""The DICOM headers: file meta, patient/study/series attributes and the full WSI dataset.

:func:`_wsi_dataset` builds everything of one instance but its pixel data and offset tables
(those are appended by :mod:`converter.testkit.pixeldata` once all frames are encoded). Dates are
fixed and every UID is name-based, so the same spec gives byte-identical headers.
"""

from __future__ import annotations

import hashlib

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from converter.testkit.icc import srgb_icc_profile
from converter.testkit.plan import _Instance
from converter.testkit.spec import (
    _FOCAL_PLANE_SPACING_UM,
    _LOSSY,
    _LOSSY_METHOD,
    _ORIENTATION,
    _ORIGIN_X_MM,
    _ORIGIN_Y_MM,
    _SLIDE_X_MM,
    _SLIDE_Y_MM,
    TRANSFER_SYNTAX_UIDS,
    SlideSpec,
    _spec_key,
    _uid,
    expected_photometric,
    series_uids,
)

_IMPLEMENTATION_VERSION_NAME = "WSINODE_SYN_1"
_MANUFACTURER = "wsi-node synthetic"
# Fixed dates: a timestamp would break byte-identical output.
_DATE = "20240102"
_TIME = "030405"
_DATETIME = _DATE + _TIME + ".000000"


def _ds(value: float) -> str:
    """Format a decimal string (DS, max 16 chars) without float noise such as 0.30000000000000004."""
    s = f"{value:.10g}"
    if s == "-0":
        s = "0"
    assert len(s) <= 16, s
    return s


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
