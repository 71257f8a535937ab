"""Which frame holds which tile of a level.

TILED_FULL frames follow an implicit order (columns fastest, then rows, then
focal planes, then optical paths, continued across concatenation parts).
TILED_SPARSE frames, and any frames that carry per-frame plane positions,
say where they are. We trust explicit positions over the implicit order,
because some writers store frames out of raster order or leave tiles out.

The implicit TILED_FULL order (PS3.3 C.8.12.4.1.4 / C.7.6.17.3) is kept as
arithmetic, not as a dict of every tile: a 150,000 px slide has ~275,000
level-0 tiles, and a dict entry with its key tuple and FrameRef costs ~250
bytes a tile (issue 14: memory flat whatever the frame count).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

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
    frames: Mapping[tuple[int, int], FrameRef]
    """(column, row) -> the frame that holds that tile (a dict, or _TiledFull's arithmetic)."""
    focal_plane_note: str | None = None
    optical_path_note: str | None = None

    @property
    def expected(self) -> int:
        return self.tiles_across * self.tiles_down

    @property
    def missing(self) -> int:
        return self.expected - len(self.frames)

    def frame_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(instance, frame) of every tile in raster order as two int64 arrays; -1: no frame.

        For copying a whole level without a Python step per tile (TILED_FULL: arithmetic).
        """
        n = self.expected
        if isinstance(self.frames, _TiledFull):
            return self.frames.table()
        inst, frame = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        for (col, row), ref in self.frames.items():
            inst[row * self.tiles_across + col] = ref.instance
            frame[row * self.tiles_across + col] = ref.frame
        return inst, frame


class _TiledFull(Mapping):
    """The TILED_FULL tiles of one focal plane and the first optical path, computed, not stored.

    Frame number n (across instances: InConcatenationNumber order, ConcatenationFrameOffsetNumber,
    PS3.3 C.7.6.16.2.2.6) holds tile n % (across x down) of plane (n // (across x down)) % planes of
    optical path n // (across x down x planes). Where instances overlap, the first one listed wins
    (as setdefault did).
    """

    def __init__(self, across: int, down: int, plane: int, planes: int, spans: list[tuple[int, int]]) -> None:
        self.across, self.down, self.plane, self.planes = across, down, plane, planes
        # spans: per instance (first frame number, frame count), in the level's instance order.
        self._spans = spans
        self._order = sorted(range(len(spans)), key=lambda i: spans[i][0])
        self._starts = [spans[i][0] for i in self._order]
        self._count: int | None = None

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        numbers = np.arange(self.across * self.down, dtype=np.int64) + self.plane * self.across * self.down
        inst, frame = np.full(len(numbers), -1, np.int64), np.full(len(numbers), -1, np.int64)
        for idx in reversed(range(len(self._spans))):  # the first listed instance wins: it is assigned last
            start, n = self._spans[idx]
            hit = (numbers >= start) & (numbers < start + n)
            inst[hit] = idx
            frame[hit] = numbers[hit] - start
        return inst, frame

    def _ref(self, number: int) -> FrameRef | None:
        # The first listed instance holding frame `number` (few instances per level: a scan).
        best = None
        k = bisect_right(self._starts, number)
        for pos in range(k):
            idx = self._order[pos]
            start, n = self._spans[idx]
            if start <= number < start + n and (best is None or idx < best):
                best = idx
        return None if best is None else FrameRef(best, number - self._spans[best][0])

    def _number(self, key: tuple[int, int]) -> int | None:
        try:
            col, row = key
        except (TypeError, ValueError):
            return None
        if not (0 <= col < self.across and 0 <= row < self.down):
            return None
        return self.plane * self.across * self.down + row * self.across + col

    def __getitem__(self, key: tuple[int, int]) -> FrameRef:
        number = self._number(key)
        ref = None if number is None else self._ref(number)
        if ref is None:
            raise KeyError(key)
        return ref

    def __contains__(self, key: object) -> bool:
        number = self._number(key)  # type: ignore[arg-type]
        return number is not None and self._ref(number) is not None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # From the table, not one _ref per tile: callers take min() over ~275,000 keys.
        across = self.across
        for number in np.flatnonzero(self.table()[0] >= 0).tolist():
            yield (number % across, number // across)

    def __len__(self) -> int:
        if self._count is None:
            # Union of the instances' frame ranges, clipped to this plane of the first path.
            lo = self.plane * self.across * self.down
            hi = lo + self.across * self.down
            covered, reach = 0, lo
            for start, n in sorted(self._spans):
                a, b = max(start, reach), min(start + n, hi)
                if b > a:
                    covered += b - a
                    reach = b
            self._count = covered
        return self._count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]


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
    spans = [(inst.concatenation_frame_offset, inst.number_of_frames) for inst in instances]
    return TileIndex(across, down, _TiledFull(across, down, chosen_plane, planes, spans), plane_note, path_note)
