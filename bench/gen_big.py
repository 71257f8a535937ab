"""Big DICOM WSI series without rendering: a pool of real JPEG tiles repeated over every level.

Usage:
    python bench/gen_big.py OUT_FOLDER [--width 150000] [--height 120000] [--tile 256] [--pool 48]

Why: the converter's performance targets (issue 14) are set at real slide sizes (100,000 to
150,000 px wide, 1-4 GB, ~275,000 level-0 frames). Rendering that many frames with the
synthetic generator takes far too long, and the copy path only needs real bitstreams, not
distinct ones. So a few tiles are rendered once from the generator's tissue model
(:func:`converter.testkit.render_region`) and encoded with its own JPEG encoder; every frame of
every level is then one of them, chosen by position. One instance per level, TILED_FULL, JPEG
Baseline, with the Extended Offset Table (7FE0,0001) and its lengths (7FE0,0002) and an empty
Basic Offset Table, as PS3.5 A.4 requires with it (one fragment per frame, PS3.3 C.7.6.3.1.8).
The headers are the generator's own (:mod:`converter.testkit.dataset`), so the series is what
``write_series`` would write for the same spec, apart from the frames' content.

Every frame's length is known before writing, so the offset tables go into the header first and
the pixel data follows in large sequential writes: a 4 GB series writes at disk speed.
``--check`` reads each instance back with the node's own validation (``read_instance``).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.testkit import SlideSpec, render_region  # noqa: E402
from converter.testkit.dataset import _ds, _wsi_dataset  # noqa: E402
from converter.testkit.encode import _encoder_for  # noqa: E402
from converter.testkit.plan import _plan  # noqa: E402
from converter.testkit.spec import _spec_key, _uid  # noqa: E402

_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, PS3.5 A.4
_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) Sequence Delimitation Item
_CHUNK = 64 << 20  # bytes per write


def big_spec(width: int, height: int, tile: int = 256, quality: int = 90) -> SlideSpec:
    return SlideSpec(width=width, height=height, tile_size=tile, quality=quality, offset_table="extended",
                     icc_profile=False, subsampling="420")


def tile_pool(spec: SlideSpec, count: int) -> list[bytes]:
    """`count` encoded tiles rendered from a grid over the slide (tissue and glass alike)."""
    encode = _encoder_for(spec)
    t = spec.tile_size
    side = max(1, int(count**0.5 + 0.999))
    tiles = []
    for k in range(count):
        gx, gy = k % side, k // side
        x = (spec.width - t) * (gx + 0.5) / side
        y = (spec.height - t) * (gy + 0.5) / side
        x, y = int(x) // t * t, int(y) // t * t
        tiles.append(encode(render_region(spec, x, y, t, t)))
    return tiles


def _items(pool: list[bytes]) -> list[bytes]:
    """Each pool frame as one item (header + value, even-padded: PS3.5 A.4)."""
    out = []
    for data in pool:
        if len(data) % 2:
            data += b"\0"
        out.append(_ITEM + struct.pack("<I", len(data)) + data)
    return out


def _choice(col: int, row: int, n: int) -> int:
    return (col * 7 + row * 13 + (col * row) % 5) % n


def write_big_series(spec: SlideSpec, folder: Path, pool_size: int = 48, pool: list[bytes] | None = None) -> list[Path]:
    """Write one instance per level into `folder`; returns the paths (level-<i>.dcm).

    `pool`: the encoded frames to repeat (tests pass odd ones in); default: `pool_size` rendered tiles.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pool = tile_pool(spec, pool_size) if pool is None else pool
    items = _items(pool)
    raw_frame = spec.tile_size * spec.tile_size * spec.samples_per_pixel
    key = _spec_key(spec)
    paths = []
    for inst in _plan(spec):
        if inst.role != "VOLUME":
            continue
        choice = [_choice(f.col, f.row, len(items)) for f in inst.frames]
        lengths = [len(items[c]) for c in choice]
        offsets, pos = [], 0
        for ln in lengths:
            offsets.append(pos)
            pos += ln
        ds = _wsi_dataset(spec, inst, _uid("sop", key, inst.name))
        payload = sum(len(pool[c]) for c in choice)
        ds.LossyImageCompressionRatio = _ds(round(raw_frame * len(choice) / payload, 2))
        ds.ExtendedOffsetTable = struct.pack(f"<{len(offsets)}Q", *offsets)
        ds.ExtendedOffsetTableLengths = struct.pack(f"<{len(lengths)}Q", *(ln - 8 for ln in lengths))
        path = folder / f"{inst.name}.dcm"
        ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
        with open(path, "ab", buffering=0) as out:
            # Pixel Data, undefined length, then an empty Basic Offset Table (required with the EOT).
            out.write(b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff" + _ITEM + b"\0\0\0\0")
            buf: list[bytes] = []
            size = 0
            for c in choice:
                buf.append(items[c])
                size += len(items[c])
                if size >= _CHUNK:
                    out.write(b"".join(buf))
                    buf, size = [], 0
            buf.append(_DELIM)
            out.write(b"".join(buf))
        paths.append(path)
    return paths


def check_copy(src: Path, tiff: Path, samples: int = 64) -> dict[str, object]:
    """Check a copy-mode output against its source: BigTIFF above 4 GiB, readable by OpenSlide and
    large_image at every level, and level 0's tiles byte-identical to the source frames (a spread
    sample plus the first and last tile, read raw with tifffile). Raises AssertionError."""
    import openslide
    import tifffile

    from converter.source.frame_index import build_frame_index
    from converter.source.instance import read_instance

    with tifffile.TiffFile(tiff) as tif:
        big = tif.is_bigtiff
        assert big or tiff.stat().st_size < 1 << 32, "output above 4 GiB is not BigTIFF"
        page = tif.pages[0]
        inst = read_instance(src / "level-0.dcm")
        across = inst.tiles_across
        n = len(page.dataoffsets)
        assert n == across * inst.tiles_down, f"level 0 has {n} tiles, the source {across * inst.tiles_down}"
        picks = sorted({0, n - 1, *range(0, n, max(1, n // samples))})
        with open(src / "level-0.dcm", "rb") as fp, open(tiff, "rb") as out:
            index = build_frame_index(inst, fp)
            for k in picks:  # TILED_FULL without missing tiles: frame k is tile k
                out.seek(page.dataoffsets[k])
                got = out.read(page.databytecounts[k])
                assert got == index.read(fp, k), f"level-0 tile {k} differs from source frame {k + 1}"
        levels = sum(1 for p in tif.pages if p.is_tiled)
    with openslide.OpenSlide(str(tiff)) as slide:
        assert slide.level_count == levels, f"OpenSlide sees {slide.level_count} levels, the TIFF has {levels}"
        for lv in range(slide.level_count):
            w, h = slide.level_dimensions[lv]
            region = slide.read_region((0, 0), lv, (min(w, 512), min(h, 512)))
            assert region.size == (min(w, 512), min(h, 512))
    import large_image_source_tiff

    source = large_image_source_tiff.TiffFileTileSource(str(tiff))
    meta = source.getMetadata()
    assert (meta["sizeX"], meta["sizeY"]) == (inst.image_width, inst.image_height), meta
    for z in (0, meta["levels"] - 1):
        assert source.getTile(0, 0, z), f"large_image returned no tile at z={z}"
    return {"bigtiff": big, "tiles_checked": len(picks), "levels": levels}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=150_000)
    ap.add_argument("--height", type=int, default=120_000)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--pool", type=int, default=48)
    ap.add_argument("--check", action="store_true", help="read every instance back with the node's validation")
    args = ap.parse_args()
    t = time.monotonic()
    paths = write_big_series(big_spec(args.width, args.height, args.tile, args.quality), Path(args.out), args.pool)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} instances, {total / 1e9:.2f} GB in {time.monotonic() - t:.1f} s -> {args.out}", file=sys.stderr)
    if args.check:
        from converter.source.instance import read_instance

        for p in paths:
            inst = read_instance(p)
            print(f"  {p.name}: {inst.image_width}x{inst.image_height}, {inst.number_of_frames} frames: valid", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
