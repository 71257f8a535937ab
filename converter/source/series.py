"""A slide: the instances of one DICOM series, arranged as levels and associated images.

We group levels by their pixel matrix size, not by FrameOfReferenceUID (which
some writers give each level separately, making wsidicom drop levels), and we
say in the notes whenever an instance is not used, so nothing is lost silently.

The pyramid's structure is read from the standard's facts, not from one writer's habits
(PS3.3 A.32.8, the VL Whole Slide Microscopy IOD): each level's downsample comes from its
PixelSpacing relative to level 0 (Pixel Measures, PS3.3 C.8.12.4.1.1 / C.7.6.16.2.1), falling
back on TotalPixelMatrixColumns when a level has none. Levels need not be a factor of 2 apart
(Aperio-style factor 4 is common); a step that is a power of the pyramid's own step (e.g. 4 in a
factor-2 pyramid) means levels are missing in the middle, and the notes say which (the layout
generates them). A largest level that says DERIVED (ImageType value 1) means the ORIGINAL level
0 is missing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace

from converter.errors import SeriesError
from converter.source.instance import WsiInstance
from converter.source.level import Level


@dataclass
class Series:
    series_uid: str
    study_uid: str
    levels: list[Level]
    """Largest first."""
    associated: dict[str, WsiInstance]
    """'label', 'overview', 'thumbnail' -> instance."""
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> Level:
        return self.levels[0]

    @property
    def instances(self) -> list[WsiInstance]:
        out = [i for lv in self.levels for i in lv.instances]
        return out + list(self.associated.values())


def _concatenation_groups(instances: list[WsiInstance]) -> list[list[WsiInstance]]:
    groups: dict[str, list[WsiInstance]] = defaultdict(list)
    for inst in instances:
        groups[inst.concatenation_uid or inst.sop_instance_uid].append(inst)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: (i.in_concatenation_number or 0, i.concatenation_frame_offset))
        out.append(members)
    # Prefer the group with most frames, then a stable order.
    out.sort(key=lambda g: (-sum(i.number_of_frames for i in g), g[0].sop_instance_uid))
    return out


def _settle_inferred_roles(instances: list[WsiInstance]) -> list[WsiInstance]:
    """Without ImageType, label and overview both may say BurnedInAnnotation=YES: the larger image is the overview."""
    guessed = [i for i in instances if not i.flavor_from_image_type and i.flavor in ("LABEL", "OVERVIEW")]
    if len(guessed) < 2:
        return instances
    guessed.sort(key=lambda i: -i.image_width * i.image_height)
    roles = {guessed[0].sop_instance_uid: "OVERVIEW", **{i.sop_instance_uid: "LABEL" for i in guessed[1:]}}
    return [replace(i, flavor=roles[i.sop_instance_uid]) if i.sop_instance_uid in roles else i for i in instances]


def level_downsamples(levels: list[Level]) -> tuple[list[float], list[str]]:
    """Each level's downsample relative to level 0, and notes where PixelSpacing and size disagree.

    PixelSpacing (mm, row then column) is the physical truth (PS3.3 C.7.6.16.2.1); the size ratio
    is used when a level has no spacing. A disagreement of more than 10% is noted and the sizes win
    (readers place tiles by pixel matrix size).
    """
    base = levels[0]
    out: list[float] = []
    notes: list[str] = []
    for lv in levels:
        by_size = base.width / lv.width
        ps, ps0 = lv.pixel_spacing, base.pixel_spacing
        if ps and ps0 and ps[1] > 0 and ps0[1] > 0:
            by_spacing = ps[1] / ps0[1]
            if abs(by_spacing / by_size - 1) > 0.1:
                notes.append(f"level {lv.width}x{lv.height}: PixelSpacing says downsample {by_spacing:.2f},"
                             f" its size {by_size:.2f}; the size is used")
        out.append(by_size)
    return out, notes


def pyramid_gaps(downsamples: list[float]) -> list[str]:
    """Levels missing in the middle of the pyramid: a step that is the pyramid's own step raised to
    a power >= 2 (4 in a factor-2 pyramid, 16 in a factor-4 one). Pure; for the notes."""
    steps = [b / a for a, b in zip(downsamples, downsamples[1:]) if a > 0]
    if not steps:
        return []
    unit = min(steps)
    if unit < 1.5:
        return []
    if abs(unit - round(unit)) < 0.1:
        unit = float(round(unit))  # sizes are rounded up per level (ceil), so 3000/1504 is a step of 2
    gaps = []
    for i, step in enumerate(steps):
        k = math.log(step) / math.log(unit)
        if round(k) >= 2 and abs(k - round(k)) < 0.15:
            start = unit ** round(math.log(downsamples[i]) / math.log(unit))
            missing = [start * unit**j for j in range(1, round(k))]
            gaps.append(
                f"between downsample {downsamples[i]:.3g} and {downsamples[i + 1]:.3g} the series has no level at downsample"
                f" {', '.join(f'{m:.3g}' for m in missing)} (the pyramid steps by {unit:g}); the output generates it"
            )
    return gaps


def build_series(instances: list[WsiInstance]) -> Series:
    """Arrange the WSI instances of one series. Raises SeriesError if there is no VOLUME level."""
    if not instances:
        raise SeriesError("empty series", "")
    uid = instances[0].series_uid
    notes: list[str] = []
    instances = _settle_inferred_roles(instances)
    volumes = [i for i in instances if i.flavor == "VOLUME"]
    if not volumes:
        names = ", ".join(sorted(i.name for i in instances))
        raise SeriesError(
            f"series {uid} has no VOLUME image (only {names}); there is no pyramid to convert.",
            "Send the slide's pyramid levels too (ImageType ...\\VOLUME), not only its label or overview.",
        )
    if any(not i.flavor_from_image_type for i in instances):
        notes.append("some instances have no ImageType; their role was inferred from the image size and flags")
    by_size: dict[tuple[int, int], list[WsiInstance]] = defaultdict(list)
    for inst in volumes:
        by_size[(inst.image_width, inst.image_height)].append(inst)
    levels = []
    for size, members in sorted(by_size.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        groups = _concatenation_groups(members)
        chosen = groups[0]
        for other in groups[1:]:
            notes.append(
                f"level {size[0]}x{size[1]}: instance(s) {', '.join(i.name for i in other)} not used;"
                f" {', '.join(i.name for i in chosen)} already cover this level"
            )
        total = chosen[0].in_concatenation_total
        if total and len(chosen) < total:
            notes.append(f"level {size[0]}x{size[1]}: only {len(chosen)} of {total} concatenation parts present; missing tiles are background")
        levels.append(Level(chosen))
    downsamples, spacing_notes = level_downsamples(levels)
    notes.extend(spacing_notes)
    notes.extend(f"missing level: {gap}" for gap in pyramid_gaps(downsamples))
    top = levels[0].first
    if (getattr(top, "pixel_origin", None) or "").upper() == "DERIVED":  # ImageType value 1, PS3.3 C.8.12.4.1.1
        notes.append(f"missing level: the largest level ({top.image_width}x{top.image_height}) is DERIVED; the ORIGINAL"
                     " full-resolution level 0 is not in the series, so the output starts at this level")
    fors = {i.frame_of_reference_uid for i in volumes}
    if len(fors) > 1:
        notes.append(f"levels carry {len(fors)} different FrameOfReferenceUIDs; they were combined by size")
    associated: dict[str, WsiInstance] = {}
    for flavor in ("LABEL", "OVERVIEW", "THUMBNAIL"):
        found = sorted((i for i in instances if i.flavor == flavor), key=lambda i: i.sop_instance_uid)
        if found:
            associated[flavor.lower()] = found[0]
            for extra in found[1:]:
                notes.append(f"extra {flavor.lower()} instance {extra.name} not used")
    for lv in levels:
        ti = lv.tile_index
        for note in (ti.focal_plane_note, ti.optical_path_note):
            if note:
                notes.append(f"level {lv.width}x{lv.height}: {note}")
        if ti.missing:
            notes.append(f"level {lv.width}x{lv.height}: {ti.missing} of {ti.expected} tiles absent (sparse); filled with background")
    return Series(uid, instances[0].study_uid, levels, associated, notes)
