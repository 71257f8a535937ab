"""The plan of a series: which instances it has, which frames each holds, and how each renders.

One :class:`_Instance` per pyramid level (or concatenation part) and per associated image, in
writing order, each with its frames in TILED_FULL order (minus missing tiles, shuffled when
asked) and the function that renders a frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from converter.testkit.associated import (
    _OVERVIEW_SPACING_MM,
    _render_overview,
    _render_thumbnail,
    _thumbnail_geometry,
    render_label,
)
from converter.testkit.render import render_region
from converter.testkit.spec import (
    LevelGeometry,
    SlideSpec,
    _spec_key,
    _uid,
    focal_plane_offsets_um,
    focus_depth_um,
    level_geometries,
    missing_tiles,
)


@dataclass(frozen=True)
class _Frame:
    """One frame of an instance: tile position in its level, focal plane and optical path."""

    col: int
    row: int
    plane: int
    path: int


@dataclass
class _Instance:
    """Everything needed to write one instance (a level, a concatenation part, an associated image)."""

    name: str
    role: str  # "VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL"
    downsample: float
    total_cols: int
    total_rows: int
    frame_cols: int
    frame_rows: int
    frames: list[_Frame]
    planes: tuple[float, ...]
    frame_of_reference: str
    instance_number: int
    render: Callable[[_Frame], np.ndarray]
    spacing: tuple[float, float]  # PixelSpacing (row, col) mm
    level_index: int = 0
    concatenation: tuple[str, str, int, int, int] | None = None  # uid, source, offset, n, total


def _level_frames(spec: SlideSpec, geo: LevelGeometry, planes: int, paths: int) -> list[_Frame]:
    """Frames of a level in TILED_FULL order (column fastest, then row, plane, path), minus
    missing tiles, shuffled when asked (sparse only)."""
    miss = missing_tiles(spec) if geo.index == 0 else frozenset()
    frames = [
        _Frame(c, r, z, p)
        for p in range(paths)
        for z in range(planes)
        for r in range(geo.tiles_y)
        for c in range(geo.tiles_x)
        if (c, r) not in miss
    ]
    if spec.shuffle_frames:
        order = np.random.default_rng([spec.seed, 0x5AF1, geo.index]).permutation(len(frames))
        frames = [frames[i] for i in order]
    return frames


def _plan(spec: SlideSpec) -> list[_Instance]:
    """All instances of the series, in writing order, with their frames and renderers."""
    key = _spec_key(spec)
    row_mm, col_mm = spec.pixel_spacing_mm
    shared_for = _uid("frame-of-reference", key)
    t = spec.tile_size
    out: list[_Instance] = []
    instance_number = 1
    z_all = focal_plane_offsets_um(spec)

    for geo in level_geometries(spec):
        planes = z_all if geo.index == 0 else (focus_depth_um(spec),)
        frames = _level_frames(spec, geo, len(planes), spec.optical_paths)
        for_uid = shared_for
        if spec.frame_of_reference_per_level:
            for_uid = _uid("frame-of-reference", key, geo.index)

        def render(f: _Frame, ds: int = geo.downsample, planes: tuple[float, ...] = planes) -> np.ndarray:
            return render_region(
                spec, f.col * t, f.row * t, t, t, ds, z_um=planes[f.plane], optical_path=f.path
            )

        common = dict(
            role="VOLUME",
            downsample=geo.downsample,
            total_cols=geo.width,
            total_rows=geo.height,
            frame_cols=t,
            frame_rows=t,
            planes=planes,
            frame_of_reference=for_uid,
            instance_number=instance_number,
            render=render,
            spacing=(row_mm * geo.downsample, col_mm * geo.downsample),
            level_index=geo.index,
        )
        parts = spec.concatenation_parts if geo.index == 0 else 1
        if parts == 1:
            out.append(_Instance(name=f"level-{geo.index}", frames=frames, **common))
        else:
            cuid = _uid("concatenation", key, geo.index)
            source = _uid("concatenation-source", key, geo.index)
            # Balanced split (sizes differ by at most one), so exactly `parts` non-empty parts.
            base, extra = divmod(len(frames), parts)
            sizes = [base + (k < extra) for k in range(parts)]
            starts = [sum(sizes[:k]) for k in range(parts)]
            bounds = [(a, a + n) for a, n in zip(starts, sizes)]
            for k, (a, b) in enumerate(bounds):
                out.append(
                    _Instance(
                        name=f"level-{geo.index}-part-{k + 1}",
                        frames=frames[a:b],
                        concatenation=(cuid, source, a, k + 1, len(bounds)),
                        **common,
                    )
                )
        instance_number += 1

    def single(
        name: str, role: str, image: Callable[[], np.ndarray], spacing: tuple[float, float], n: int
    ) -> _Instance:
        arr = image()
        for_uid = _uid("frame-of-reference", key, name) if spec.frame_of_reference_per_level else shared_for
        return _Instance(
            name=name,
            role=role,
            downsample=spacing[1] / col_mm,
            total_cols=arr.shape[1],
            total_rows=arr.shape[0],
            frame_cols=arr.shape[1],
            frame_rows=arr.shape[0],
            frames=[_Frame(0, 0, 0, 0)],
            planes=(focus_depth_um(spec),),
            frame_of_reference=for_uid,
            instance_number=n,
            render=lambda f, arr=arr: arr,
            spacing=spacing,
        )

    if spec.label:
        out.append(single("label", "LABEL", lambda: render_label(spec), (0.05, 0.05), instance_number))
        instance_number += 1
    if spec.overview:
        sp = _OVERVIEW_SPACING_MM
        out.append(single("overview", "OVERVIEW", lambda: _render_overview(spec), (sp, sp), instance_number))
        instance_number += 1
    if spec.thumbnail:
        _, _, f = _thumbnail_geometry(spec)
        out.append(
            single(
                "thumbnail",
                "THUMBNAIL",
                lambda: _render_thumbnail(spec),
                (row_mm * f, col_mm * f),
                instance_number,
            )
        )
        instance_number += 1
    return out
