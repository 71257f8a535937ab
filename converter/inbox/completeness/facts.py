"""The inputs of the completeness rules: facts about one instance, and the series' activity.

:class:`InstanceFacts` is what the rules need to know about one received instance (header only,
hashable, kept by the tracker in its state database); :class:`SeriesActivity` is what the tracker
knows about the series' traffic (last arrival, open associations, last conversion). Both reject
impossible values on construction, so the rules never divide by zero, loop, or wait forever on NaN.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the type hint: keeps this module free of pydicom and file access
    from converter.source.instance import WsiInstance


@dataclass(frozen=True)
class InstanceFacts:
    """What the completeness rules need to know about one received instance.

    A small, header-only, hashable subset of :class:`converter.source.instance.WsiInstance`, so that the
    tracker can keep it in its state database and re-assess a series without reading any file.
    """

    sop_instance_uid: str
    flavor: str
    """VOLUME / LABEL / OVERVIEW / THUMBNAIL (ImageType value 3, or inferred)."""
    image_width: int
    """TotalPixelMatrixColumns."""
    image_height: int
    """TotalPixelMatrixRows."""
    tile_width: int
    """Columns (of one frame)."""
    tile_height: int
    """Rows (of one frame)."""
    number_of_frames: int
    dimension_organization: str | None = None
    """TILED_FULL / TILED_SPARSE / None. None counts as TILED_FULL unless ``has_positions``."""
    has_positions: bool = False
    """Per-frame plane positions are present: the instance says where its frames are, so it is
    counted like TILED_SPARSE (it holds exactly the frames it declares)."""
    focal_planes: int = 1
    """TotalPixelMatrixFocalPlanes."""
    optical_paths: int = 1
    """Number of optical paths the instance declares (OpticalPathSequence items)."""
    concatenation_uid: str | None = None
    in_concatenation_number: int | None = None
    in_concatenation_total: int | None = None
    concatenation_frame_offset: int = 0
    """ConcatenationFrameOffsetNumber: frames of the concatenation held by earlier parts."""
    pixel_origin: str | None = None
    """ImageType value 1, "ORIGINAL" or "DERIVED" (None: not known). PS3.3 C.8.12.4.1.1: the
    level scanned at full resolution is ORIGINAL, levels resampled from it are DERIVED."""

    def __post_init__(self) -> None:
        """Reject impossible headers here, so the rules below never divide by zero or loop."""
        problems = []
        if not self.sop_instance_uid:
            problems.append("sop_instance_uid is empty")
        for name in ("image_width", "image_height", "tile_width", "tile_height", "number_of_frames", "focal_planes", "optical_paths"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("in_concatenation_number", "in_concatenation_total"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or None (got {value})")
        if self.concatenation_frame_offset < 0:
            problems.append(f"concatenation_frame_offset must be >= 0 (got {self.concatenation_frame_offset})")
        if problems:
            raise ValueError(f"InstanceFacts {self.sop_instance_uid!r}: " + "; ".join(problems))

    @classmethod
    def from_instance(cls, inst: WsiInstance) -> InstanceFacts:
        """The facts of an instance read with :func:`converter.source.instance.read_instance`."""
        return cls(
            sop_instance_uid=inst.sop_instance_uid,
            flavor=inst.flavor,
            image_width=inst.image_width,
            image_height=inst.image_height,
            tile_width=inst.tile_width,
            tile_height=inst.tile_height,
            number_of_frames=inst.number_of_frames,
            dimension_organization=inst.dimension_organization,
            has_positions=inst.frame_positions is not None,
            focal_planes=inst.focal_planes,
            optical_paths=max(1, len(inst.optical_paths)),
            concatenation_uid=inst.concatenation_uid,
            in_concatenation_number=inst.in_concatenation_number,
            in_concatenation_total=inst.in_concatenation_total,
            concatenation_frame_offset=inst.concatenation_frame_offset,
            # Forward-compatible: WsiInstance carries ImageType value 1 once instance.py reads it.
            pixel_origin=getattr(inst, "pixel_origin", None),
        )

    @property
    def is_volume(self) -> bool:
        return self.flavor.strip().upper() == "VOLUME"

    @property
    def is_derived(self) -> bool:
        """ImageType value 1 says DERIVED (a resampled level, not the scanned one)."""
        return (getattr(self, "pixel_origin", None) or "").strip().upper() == "DERIVED"

    @property
    def is_original(self) -> bool:
        return (getattr(self, "pixel_origin", None) or "").strip().upper() == "ORIGINAL"

    @property
    def is_sparse(self) -> bool:
        """Frames counted as declared: TILED_SPARSE, or explicit per-frame positions."""
        return self.has_positions or (self.dimension_organization or "").strip().upper() == "TILED_SPARSE"

    @property
    def tiles_across(self) -> int:
        return -(-self.image_width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.image_height // self.tile_height)

    @property
    def full_frames(self) -> int:
        """Frames of the whole level if it is TILED_FULL: every tile of every plane and path."""
        return self.tiles_across * self.tiles_down * self.focal_planes * self.optical_paths

    @property
    def fits_one_tile(self) -> bool:
        return self.image_width <= self.tile_width and self.image_height <= self.tile_height


@dataclass(frozen=True)
class SeriesActivity:
    """What the tracker knows about the series' traffic (times in seconds, any fixed epoch)."""

    last_arrival: float
    """Time of the newest instance."""
    open_associations: int
    """Associations currently sending instances of this series."""
    converted_at: float | None = None
    """When it was last converted (None: never)."""
    associations_ended: int = 0
    """Associations that delivered instances of this series and have ended (released or aborted)."""
    committed_at: float | None = None
    """When a storage commitment request referenced every instance the node has of this series, all
    committed (PS3.4 J.3.2): the sender's "this is the whole slide" (None: no such request)."""

    def __post_init__(self) -> None:
        """Reject NaN/infinite times and negative counts: they would silently disable the timers."""
        if not math.isfinite(self.last_arrival):
            raise ValueError(f"last_arrival must be a finite time (got {self.last_arrival})")
        if self.converted_at is not None and not math.isfinite(self.converted_at):
            raise ValueError(f"converted_at must be a finite time or None (got {self.converted_at})")
        if self.open_associations < 0:
            raise ValueError(f"open_associations must be >= 0 (got {self.open_associations})")
        if self.associations_ended < 0:
            raise ValueError(f"associations_ended must be >= 0 (got {self.associations_ended})")
        if self.committed_at is not None and not math.isfinite(self.committed_at):
            raise ValueError(f"committed_at must be a finite time or None (got {self.committed_at})")
