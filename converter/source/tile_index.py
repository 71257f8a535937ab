"""Which frame holds which tile of a level.

TILED_FULL frames follow an implicit order (columns fastest, then rows, then
focal planes, then optical paths, continued across concatenation parts).
TILED_SPARSE frames, and any frames that carry per-frame plane positions,
say where they are. We trust explicit positions over the implicit order,
because some writers store frames out of raster order or leave tiles out.
"""

from __future__ import annotations

from dataclasses import dataclass

from converter.errors import SeriesError
from converter.source.instance import WsiInstance


@dataclass(frozen=True)
class FrameRef:
    instance: int
    """Index into the level's instances."""
    frame: int
    """0-based frame number within that instance."""


@dataclass(frozen=True)
class TileIndex:
    tiles_across: int
    tiles_down: int
    frames: dict[tuple[int, int], FrameRef]
    focal_plane_note: str | None = None
    optical_path_note: str | None = None

    @property
    def expected(self) -> int:
        return self.tiles_across * self.tiles_down

    @property
    def missing(self) -> int:
        return self.expected - len(self.frames)


def _choose_plane(zs: list[float]) -> float:
    """The default focal plane: the one nearest the nominal focus (z = 0), else the middle one."""
    if any(z == 0 for z in zs):
        return 0.0
    ordered = sorted(zs)
    return ordered[len(ordered) // 2]


def build_tile_index(instances: list[WsiInstance]) -> TileIndex:
    """Index the tiles of one level, choosing the default focal plane and the first optical path."""
    first = instances[0]
    across, down = first.tiles_across, first.tiles_down
    tw, th = first.tile_width, first.tile_height
    frames: dict[tuple[int, int], FrameRef] = {}
    plane_note = path_note = None
    paths = first.optical_paths
    if len(paths) > 1:
        path_note = f"optical path '{paths[0]}' of {len(paths)} converted ({', '.join(paths)})"

    explicit = [i for i in instances if i.frame_positions is not None]
    if explicit and len(explicit) == len(instances):
        zs = sorted({p.z for inst in instances for p in inst.frame_positions if p.z is not None})
        chosen_z = _choose_plane(zs) if len(zs) > 1 else None
        if chosen_z is not None:
            plane_note = f"focal plane z={chosen_z:g} of {len(zs)} planes converted"
        chosen_path = paths[0]
        for idx, inst in enumerate(instances):
            for frame, pos in enumerate(inst.frame_positions):
                if chosen_z is not None and pos.z is not None and pos.z != chosen_z:
                    continue
                if len(paths) > 1 and pos.optical_path is not None and pos.optical_path != chosen_path:
                    continue
                if pos.column % tw or pos.row % th:
                    raise SeriesError(
                        f"{inst.path}: frame {frame + 1} starts at column {pos.column + 1}, row {pos.row + 1},"
                        f" which is not on the {tw}x{th} tile grid.",
                        "wsi-node needs frames aligned to the tile grid; re-export the slide with a tiled layout.",
                    )
                key = (pos.column // tw, pos.row // th)
                if key[0] >= across or key[1] >= down:
                    continue
                frames.setdefault(key, FrameRef(idx, frame))
        return TileIndex(across, down, frames, plane_note, path_note)

    planes = first.focal_planes
    chosen_plane = 0
    if planes > 1:
        chosen_plane = planes // 2
        plane_note = f"focal plane {chosen_plane + 1} of {planes} (the middle one) converted"
    per_plane = across * down
    for idx, inst in enumerate(instances):
        for frame in range(inst.number_of_frames):
            number = inst.concatenation_frame_offset + frame
            path, rest = divmod(number, per_plane * planes)
            plane, tile = divmod(rest, per_plane)
            if path != 0 or plane != chosen_plane:
                continue
            row, col = divmod(tile, across)
            frames.setdefault((col, row), FrameRef(idx, frame))
    return TileIndex(across, down, frames, plane_note, path_note)
