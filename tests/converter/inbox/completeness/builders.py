"""InstanceFacts built by hand for the completeness tests: levels, pyramids, concatenations,
and a Hypothesis strategy for whole randomized series.

Shared by the tests of every module of converter/inbox/completeness/.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from converter.inbox.completeness import InstanceFacts


def vol(
    uid: str,
    w: int,
    h: int,
    tile: int = 256,
    frames: int | None = None,
    **kw: object,
) -> InstanceFacts:
    """A VOLUME instance; by default TILED_FULL with all its frames."""
    planes, paths = kw.get("focal_planes", 1), kw.get("optical_paths", 1)
    if frames is None:
        frames = math.ceil(w / tile) * math.ceil(h / tile) * planes * paths  # type: ignore[operator]
    kw.setdefault("dimension_organization", "TILED_FULL")
    return InstanceFacts(uid, "VOLUME", w, h, tile, tile, frames, **kw)  # type: ignore[arg-type]


def assoc(uid: str, flavor: str, w: int = 400, h: int = 300) -> InstanceFacts:
    return InstanceFacts(uid, flavor, w, h, w, h, 1, "TILED_FULL")


def pyramid(w: int, h: int, tile: int = 256, prefix: str = "lv") -> list[InstanceFacts]:
    """Single-instance TILED_FULL levels halving until one fits a tile."""
    out, ds = [], 1
    while True:
        lw, lh = math.ceil(w / ds), math.ceil(h / ds)
        out.append(vol(f"{prefix}{len(out)}", lw, lh, tile))
        if lw <= tile and lh <= tile:
            return out
        ds *= 2


def concat_parts(uid: str, w: int, h: int, sizes: list[int], tile: int = 256, total: int | None = -1, **kw: object) -> list[InstanceFacts]:
    """Parts of one concatenation holding consecutive frame ranges of the given sizes."""
    parts, offset = [], 0
    n_total = len(sizes) if total == -1 else total
    for k, n in enumerate(sizes):
        parts.append(
            vol(
                f"{uid}.{k + 1}", w, h, tile, n,
                concatenation_uid=uid, in_concatenation_number=k + 1, in_concatenation_total=n_total,
                concatenation_frame_offset=offset, **kw,
            )
        )
        offset += n
    return parts


# --------------------------------------------------------------------------------------------
# Randomized series (property-based tests)
# --------------------------------------------------------------------------------------------


def _split(draw, n: int, k: int) -> list[int]:
    """n frames into k non-empty consecutive parts."""
    k = max(1, min(k, n))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True))) if k > 1 else []
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


@st.composite
def series(draw, kind: str | None = None) -> list[InstanceFacts]:
    """A complete series as InstanceFacts: a pyramid halving until one tile, each level sent as
    one instance, a concatenation, or one instance per optical path / focal plane (TILED_FULL);
    sparse levels declare a random number of frames; optional associated images."""
    kind = kind or draw(st.sampled_from(["full", "sparse", "concatenated"]))
    tile = draw(st.sampled_from([64, 128, 256]))
    w, h = draw(st.integers(1, 8 * tile)), draw(st.integers(1, 8 * tile))
    planes, paths = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    sizes, ds = [], 1
    while True:
        lw, lh = math.ceil(w / ds), math.ceil(h / ds)
        sizes.append((lw, lh))
        if lw <= tile and lh <= tile:
            break
        ds *= 2
    sparse_dim = dict(dimension_organization="TILED_SPARSE", has_positions=True)
    facts: list[InstanceFacts] = []
    for li, (lw, lh) in enumerate(sizes):
        lp = planes if li == 0 else 1
        geometry = dict(focal_planes=lp, optical_paths=paths)
        full_n = math.ceil(lw / tile) * math.ceil(lh / tile) * lp * paths
        name = f"s{li}"
        if kind == "sparse":
            declared = draw(st.integers(1, full_n))
            k = draw(st.integers(1, min(4, declared)))
            if k == 1:
                facts.append(vol(name, lw, lh, tile, declared, **geometry, **sparse_dim))
            else:
                facts += concat_parts(f"c{li}", lw, lh, _split(draw, declared, k), tile, **geometry, **sparse_dim)
            continue
        modes = ["single", "concat"] + (["per-path"] if paths > 1 else []) + (["per-plane"] if lp > 1 else [])
        if kind == "concatenated" and li == 0 and full_n > 1:
            mode = "concat"
        else:
            mode = draw(st.sampled_from(modes))
        if mode == "single":
            facts.append(vol(name, lw, lh, tile, **geometry))
        elif mode == "concat":
            k = draw(st.integers(min(2 if kind == "concatenated" else 1, full_n), min(5, full_n)))
            facts += concat_parts(f"c{li}", lw, lh, _split(draw, full_n, k), tile, **geometry)
        else:
            k = paths if mode == "per-path" else lp
            facts += [vol(f"{name}.{j}", lw, lh, tile, full_n // k, **geometry) for j in range(k)]
    for flavor in ("LABEL", "OVERVIEW", "THUMBNAIL"):
        if draw(st.booleans()):
            facts.append(assoc(f"a-{flavor}", flavor))
    return facts


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = st.sampled_from(["full", "sparse", "concatenated"])
