"""Deterministic synthetic DICOM whole-slide-image (WSI) series for tests, benchmarks and demos.

Test and demo support, never on the conversion path.

Why this exists: the converter has to cope with series from many writers (scanners, wsidicomizer,
Google's wsi2dcm, ...). Real slides are large, licence-encumbered and do not come with ground
truth. This package writes VL Whole Slide Microscopy Image series (SOP class
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

Modules, in the order a series is made:

* :mod:`~converter.testkit.spec`: :class:`SlideSpec`, level geometry, missing tiles, focal planes, UIDs;
* :mod:`~converter.testkit.tissue`: the seeded tissue model;
* :mod:`~converter.testkit.render`: ground-truth pixels (:func:`render_region`);
* :mod:`~converter.testkit.associated`: label, thumbnail and overview images;
* :mod:`~converter.testkit.icc`: the sRGB ICC profile;
* :mod:`~converter.testkit.plan`: the instances of a series and their frames;
* :mod:`~converter.testkit.dataset`: the DICOM headers;
* :mod:`~converter.testkit.encode`: frame encoders per transfer syntax;
* :mod:`~converter.testkit.pixeldata`: the pixel data element, streamed;
* :mod:`~converter.testkit.write`: :func:`write_series`, :func:`write_non_wsi`;
* ``python -m converter.testkit`` (:mod:`~converter.testkit.__main__`): the same from the command line.

Callers import the public API from the package: ``from converter.testkit import SlideSpec, write_series``.
"""

from __future__ import annotations

from converter.testkit.associated import render_label
from converter.testkit.encode import available_transfer_syntaxes
from converter.testkit.icc import srgb_icc_profile
from converter.testkit.render import render_region
from converter.testkit.spec import (
    TRANSFER_SYNTAX_UIDS,
    LevelGeometry,
    SlideSpec,
    expected_photometric,
    focal_plane_offsets_um,
    focus_depth_um,
    level_geometries,
    missing_tiles,
    series_uids,
)
from converter.testkit.write import MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE, write_non_wsi, write_series

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
