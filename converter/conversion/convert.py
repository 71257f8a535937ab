"""Converting one series: plan, produce pixels, write, verify, publish.

This is the unit of work the executor runs (one series per task), so it
takes and returns plain picklable values and never raises: every failure
comes back as a report with status 'failed' and a message that names the
problem and the fix. Nothing is published unless the output was verified.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import imagecodecs
import numpy as np
import tifffile

from config.settings import ConversionOptions
from converter.codecs import colour
from converter.codecs.frames import fill_tile_like, frame_colour, ts_name
from converter.errors import OutputError, VerificationError
from converter.source.instance import WsiInstance
from converter.codecs.jpeg import JpegInfo, parse_jpeg
from converter.tiff.layout import COPYABLE_SUBSAMPLING, LayoutPlan, SourceLevelFacts, plan_layout
from converter.source.level import Level
from converter.source.level_reader import LevelReader
from converter.durable import fsync_and_rename, fsync_file
from converter.tiff.pyramid import TileAppender, TileSpool, downsample2
from converter.tiff.copier import HEADER, Copier
from converter.tiff.forked_copier import ForkedCopier
from converter.tiff.relocate import move_structure
from converter.tiff.splice import point_tiles, tile_places
from converter.conversion.early_copy import adopt, pace_of, start_early_copy
from converter.conversion.copy_frames import CopyMismatch as _CopyMismatch, PlannedCopy, check_frame, plan_copy
from converter.conversion.encode import encode_chains
from converter.conversion.report import ConversionReport, LevelReport
from converter.conversion.run import run_conversion, sidecar_path, started_pool  # noqa: F401 (sidecar_path: imported from here by the pipeline)
from converter.source.series import Series, build_series
from converter.conversion.spliced import Background, write_spliced
from converter.tiff.writer import AssociatedImage, TiffLevel, aperio_description, write_tiff
from converter.tiff.plausibility import enforce_colour
from converter.tiff.verify import verify_tiff

log = logging.getLogger("wsi_node.convert")

THUMBNAIL_MAX = 1024


def _copy_facts(level: Level, reader: LevelReader) -> tuple[SourceLevelFacts, JpegInfo | None]:
    blocker: str | None = None
    info: JpegInfo | None = None
    tw, th = level.tile_width, level.tile_height
    if not level.is_jpeg_baseline:
        blocker = f"frames are {ts_name(level.transfer_syntax)}, not JPEG Baseline"
    elif tw % 16 or th % 16:
        blocker = f"{tw}x{th} frames are not a multiple of 16 px, which TIFF tiles must be"
    elif level.first.bits_allocated != 8:
        blocker = f"{level.first.bits_allocated}-bit samples"
    else:
        first = min(level.tile_index.frames, default=None)
        data = reader.frame_bytes(*first) if first is not None else None
        if data is None:
            blocker = "the level has no frames"
        else:
            try:
                info = parse_jpeg(data)
            except ValueError as exc:
                blocker = f"first frame is not a readable JPEG bitstream ({exc})"
            else:
                if not info.baseline:
                    blocker = "frames are not baseline (SOF0) JPEG"
                elif (info.width, info.height) != (tw, th):
                    blocker = f"JPEG frames are {info.width}x{info.height}, the header says {tw}x{th}"
                elif info.colorspace not in ("YCbCr", "RGB", "gray"):
                    blocker = f"JPEG frames have {info.components} components"
                elif info.subsampling not in COPYABLE_SUBSAMPLING:
                    blocker = f"chroma subsampling {info.subsampling} cannot be tagged in TIFF"
                elif tw % (8 * max(info.subsampling)) or th % (8 * max(info.subsampling)):
                    blocker = f"{tw}x{th} tiles are not a multiple of the JPEG MCU size"
                else:
                    # TIFF readers decode copied frames by their markers and the Photometric tag;
                    # when the colour decision is not what the markers say (no marker, and the
                    # label decided, PS3.5 8.2.1 note 2) re-encode, so every reader agrees.
                    decided = _TIFF_SPACE.get(frame_colour(data, level.first).decided)
                    if decided != info.colorspace:
                        blocker = f"frames carry no colour marker and the label decides {decided}, not what TIFF readers would assume ({info.colorspace})"
    facts = SourceLevelFacts(level.width, level.height, tw, th, blocker, reader.frame_sizes())
    return facts, info


_TIFF_SPACE = {colour.RGB: "RGB", colour.YBR: "YCbCr", colour.GRAY: "gray"}


def _spacing(series: Series, width: int, height: int) -> tuple[float, float] | None:
    base = series.base
    if base.pixel_spacing is None:
        return None
    row_mm, col_mm = base.pixel_spacing
    return row_mm * base.height / height, col_mm * base.width / width


class _CopiedTiles:
    """Re-iterable tiles of a copied level (the TIFF writer and the thumbnail maker both read them)."""

    def __init__(self, index: int, level: Level, reader: LevelReader, info: JpegInfo, fill: bytes) -> None:
        self.args = (index, level, reader, info, fill)

    def __iter__(self) -> Iterator[bytes]:
        return _copy_tiles(*self.args)


def _copy_tiles(index: int, level: Level, reader: LevelReader, info: JpegInfo, fill: bytes) -> Iterator[bytes]:
    ti = level.tile_index
    for row in range(ti.tiles_down):
        for col, data in enumerate(reader.row_frames(row)):
            if data is None:
                yield fill
                continue
            ref = ti.frames[(col, row)]
            check_frame(data, info, index, col, row, level.instances[ref.instance].path, ref.frame)
            yield data


def _decode_auto(data: bytes) -> np.ndarray:
    a = imagecodecs.jpeg8_decode(data)
    return a if a.ndim == 3 else a[..., np.newaxis]


def _level_image(tl: TiffLevel) -> np.ndarray:
    """Pixels of a small output level, assembled from its encoded tiles."""
    across = -(-tl.width // tl.tile_width)
    rows, current = [], []
    for data in tl.tiles:
        current.append(_decode_auto(data))
        if len(current) == across:
            rows.append(np.concatenate(current, axis=1))
            current = []
    return np.concatenate(rows, axis=0)[: tl.height, : tl.width]


def _instance_pixels(inst: WsiInstance, pool: ThreadPoolExecutor) -> np.ndarray:
    with LevelReader(Level([inst]), pool) as reader:
        return reader.region(0, 0, inst.image_width, inst.image_height)


def _description(series: Series, plan: LayoutPlan) -> str:
    base = series.base.first
    lines = ["wsi-node pyramidal TIFF", f"SeriesInstanceUID={series.series_uid}", f"StudyInstanceUID={series.study_uid}"]
    lines += [f"{k}={v}" for k, v in base.metadata.items()]
    if base.pixel_spacing:
        lines.append(f"MPP={base.pixel_spacing[1] * 1000:.6f}x{base.pixel_spacing[0] * 1000:.6f}")
    lines.append("Levels=" + ",".join(f"{lv.width}x{lv.height}:{lv.action}" for lv in plan.levels))
    return "\n".join(lines)


def _thumbnail_from(levels: list[TiffLevel]) -> np.ndarray:
    small = next((tl for tl in levels if max(tl.width, tl.height) <= THUMBNAIL_MAX), levels[-1])
    image = _level_image(small)
    while max(image.shape[:2]) > THUMBNAIL_MAX:
        image = downsample2(image)
    return image


def convert_series(instances: list[WsiInstance], output: str | Path, options: ConversionOptions,
                   notes: list[str] | None = None, early: ForkedCopier | None = None) -> ConversionReport:
    """Convert one series to `output`; returns the report, never raises for bad input.

    `notes` (e.g. why the slide looked incomplete) go into the report first. `early`: a copy the
    command line started before reading the headers (converter.conversion.early_copy); else the
    conversion starts its own.
    """
    output = Path(output)
    first = instances[0]
    report = ConversionReport(series_uid=first.series_uid, study_uid=first.study_uid, options=asdict(options))
    report.source["input_sop_instance_uids"] = sorted({i.sop_instance_uid for i in instances})
    report.notes.extend(notes or [])

    def describe(exc: Exception) -> str:
        if isinstance(exc, _CopyMismatch):
            return f"series {first.series_uid}: level {exc.level}: {exc.reason}"
        log.exception("conversion of series %s failed unexpectedly", first.series_uid)
        return f"series {first.series_uid}: unexpected {type(exc).__name__}: {exc}. Fix: report this as a bug with the sidecar JSON."

    return run_conversion(output, report, lambda work, tmp: _convert(instances, output, options, report, work, tmp, early), describe)


def _convert(
    instances: list[WsiInstance],
    output: Path,
    options: ConversionOptions,
    report: ConversionReport,
    work: Path,
    tmp: Path,
    given: ForkedCopier | None = None,
) -> None:
    t = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)  # (and the output's folder, where the copy starts now)
    early = given or start_early_copy(instances, tmp, options)  # the disk starts while the series is planned
    if given is not None:  # the command line's copy began before this conversion did: part of its time
        report.timings["copy_started_before"] = round(t - given.started, 3)
    try:
        _convert_series(instances, options, report, work, tmp, output, early, t)
    finally:
        if early is not None:
            early.cancel()


def _convert_series(instances, options, report, work, tmp, output, early, t) -> None:
    series = build_series(instances)
    report.notes.extend(series.notes)
    report.source |= {
        "instances": [{"file": i.name, "sop_instance_uid": i.sop_instance_uid, "flavor": i.flavor} for i in series.instances],
        "levels": [
            {"width": lv.width, "height": lv.height, "tile": [lv.tile_width, lv.tile_height], "transfer_syntax": ts_name(lv.transfer_syntax)}
            for lv in series.levels
        ],
        "metadata": series.base.first.metadata,
    }
    work.mkdir(parents=True, exist_ok=True)
    blockers: dict[int, str] = {}
    with started_pool(options.threads) as pool:
        readers = {i: LevelReader(lv, pool) for i, lv in enumerate(series.levels)}
        try:
            for _attempt in range(len(series.levels) + 1):
                try:
                    _attempt_convert(series, readers, blockers, output, options, report, work, tmp, pool, t, early)
                    return
                except _CopyMismatch as exc:
                    if options.mode == "copy":
                        raise
                    if early is not None:
                        early.cancel()
                        early = None
                    report.notes.append(f"source level {exc.level}: {exc.reason}; re-encoded instead")
                    blockers[exc.level] = exc.reason
                    tmp.unlink(missing_ok=True)
        finally:
            for r in readers.values():
                r.close()


def plan_series(instances: list[WsiInstance], options: ConversionOptions) -> tuple[Series, LayoutPlan]:
    """The plan a conversion would follow, reading headers and one frame per level only (for dry runs)."""
    series = build_series(instances)
    readers = {i: LevelReader(lv) for i, lv in enumerate(series.levels)}
    try:
        facts = [_copy_facts(lv, readers[i])[0] for i, lv in enumerate(series.levels)]
    finally:
        for r in readers.values():
            r.close()
    return series, plan_layout(facts, options.mode, options.tile_size)


def _attempt_convert(series, readers, blockers, output, options, report, work, tmp, pool, t, early=None) -> None:
    facts, infos = [], []
    for i, lv in enumerate(series.levels):
        f, info = _copy_facts(lv, readers[i])
        if i in blockers:
            f = SourceLevelFacts(f.width, f.height, f.tile_width, f.tile_height, blockers[i], f.encoded_bytes)
        facts.append(f)
        infos.append(info)
    plan = plan_layout(facts, options.mode, options.tile_size)
    report.notes.extend(n for n in plan.unused if n not in report.notes)
    report.levels = [
        LevelReport(lv.index, lv.width, lv.height, lv.action, lv.reason, lv.source) for lv in plan.levels
    ]
    heads = {lv.index: chain[0].source for chain in plan.chains() for lv in chain}
    decisions = {i: r.colour() for i, r in readers.items()}
    for rep in report.levels:
        src = rep.source_level if rep.source_level is not None else heads.get(rep.index)
        if src is not None and decisions.get(src) is not None:
            rep.colour = decisions[src].as_report()
    report.timings["plan"] = round(time.monotonic() - t, 3)

    samples = 1 if series.base.samples_per_pixel == 1 else 3
    # An svs thumbnail made from the pyramid needs its pixels before the TIFF's structure can be
    # written: spool the tiles then (written twice); otherwise they go straight to the TIFF.
    direct = not (options.layout == "svs" and series.associated.get("thumbnail") is None)
    t = time.monotonic()
    spools: dict[int, TileSpool] = {}
    if not direct:
        spools = encode_chains(plan, readers, work, options, pool, report)  # type: ignore[assignment]
        report.timings["pixels"] = round(time.monotonic() - t, 3)
        t = time.monotonic()

    # Write.
    tiff_levels: list[TiffLevel] = []
    fills: dict[int, bytes] = {}
    copies: dict[int, PlannedCopy] = {}
    for lv in plan.levels:
        spacing = _spacing(series, lv.width, lv.height)
        if lv.action == "copy":
            info = infos[lv.source]
            fill = fills[lv.index] = fill_tile_like(info.colorspace, info.subsampling, plan.tile_width, plan.tile_height)
            tiles = _CopiedTiles(lv.source, series.levels[lv.source], readers[lv.source], info, fill)
            # Copied by the kernel after the TIFF structure is written; every frame is checked meanwhile.
            planned = plan_copy(lv.source, series.levels[lv.source], info, fill)
            if planned is not None:
                copies[lv.index] = planned
            tl = TiffLevel(lv.width, lv.height, plan.tile_width, plan.tile_height, samples, tiles, info.colorspace,
                           info.subsampling, spacing, placeholder=planned is not None)
        else:
            colorspace = "gray" if samples == 1 else "RGB"
            tl = TiffLevel(lv.width, lv.height, plan.tile_width, plan.tile_height, samples, spools.get(lv.index, ()),
                           colorspace, (1, 1), spacing, placeholder=direct)
        tiff_levels.append(tl)
        rep = report.levels[lv.index]
        rep.colorspace, rep.subsampling = tl.colorspace, tl.subsampling
        rep.tiles = -(-lv.width // plan.tile_width) * -(-lv.height // plan.tile_height)

    associated: list[AssociatedImage] = []
    for name, key in (("label", "label"), ("macro", "overview"), ("thumbnail", "thumbnail")):
        inst = series.associated.get(key)
        if inst is None:
            continue
        if name == "label" and not options.include_label:
            report.notes.append("label image dropped (--no-label)")
            continue
        associated.append(AssociatedImage(name, _instance_pixels(inst, pool)))
    if options.layout == "svs" and not any(a.name == "thumbnail" for a in associated):
        associated.append(AssociatedImage("thumbnail", _thumbnail_from(tiff_levels)))
    report.associated = [a.name for a in associated]

    icc = series.base.first.icc_profile if options.icc == "keep" else None
    if options.icc == "keep" and icc is None:
        report.notes.append("--icc keep: the source has no ICC profile; none embedded")
    svs_extra = {k: v for k, v in series.base.first.metadata.items() if k in ("Manufacturer", "ObjectiveLensPower")}
    if "ObjectiveLensPower" in svs_extra:
        svs_extra["AppMag"] = svs_extra.pop("ObjectiveLensPower")
    what, description = f"series {series.series_uid}", _description(series, plan)
    if not direct:
        if early is not None:  # this path writes the structure first: the early copy's places are not its own
            early.cancel()
        write_verify_publish(
            tmp, output, plan, tiff_levels, associated, readers, fills, options, report, pool_spools=spools,
            description=description, svs_extra=svs_extra, icc=icc, what=what, t_write=t, copies=copies,
        )
        return
    # The pixel data first, from byte 16 on (the copied frames, then every re-encoded tile as it is made),
    # the structure last, behind it (converter.tiff.relocate): the copy then needs nothing of the structure.
    runs = [run for c in copies.values() for run in c.splice.runs]
    copier = adopt(early, runs) or Copier(tmp, runs, HEADER, pace_of(options))
    copier.claim(tmp)  # an early copy of the command line's is in a file of its own until now
    if runs:
        report.source["copy_started"] = ("with the command" if isinstance(copier, ForkedCopier)
                                         else "before the plan" if copier is early else "after the plan")
    if early is not None and copier is not early:
        log.debug("series %s: the early copy was not what the plan copies; copied again", series.series_uid)
    structure = work / "structure.tif"
    write = _Structure(structure, work, tiff_levels, associated, options, description, svs_extra, icc)
    try:
        pages = write.write(structure, plan.bigtiff or copier.end >= CLASSIC_LIMIT)
        t_structure = time.monotonic() - t
        t = time.monotonic()
        appender = TileAppender(tmp, {lv.index: report.levels[lv.index].tiles for lv in plan.levels if lv.needs_pixels},
                                start=copier.end)
        try:
            encode_chains(plan, readers, work, options, pool, report, sink=appender)
            appender.finish()
        finally:
            appender.close()
        report.timings["pixels"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        t_write = t - t_structure
        for planned in copies.values():  # every frame checked while the kernel copies (a failure stops it)
            planned.check()
        if copies:
            report.timings["copy_check"] = round(time.monotonic() - t, 3)
        copier.join()
    except BaseException:
        copier.cancel()
        raise
    if copies:
        report.timings["splice"] = round(time.monotonic() - t, 3)
    placed = {pages[f"level-{i}"]: v for i, v in appender.placed().items()}
    fd = os.open(tmp, os.O_RDWR)
    try:
        tail = appender.end
        for i, planned in copies.items():
            splice = planned.splice
            run_at = np.array([copier.where(r) for r in splice.runs] or [0], np.uint64)
            fill_at = 0
            if splice.has_holes:
                os.pwrite(fd, splice.fill, tail)
                fill_at, tail = tail, tail + len(splice.fill)
            placed[pages[f"level-{i}"]] = tile_places(splice, run_at, fill_at)
        pages = _place_structure(fd, write, structure, pages, tail + (-tail % 16), report)
    finally:
        os.close(fd)
    point_tiles(tmp, placed)
    syncing = Background(fsync_file, tmp)
    known = {page: int(counts.sum()) for page, (_o, counts) in placed.items()}
    _verify_publish(tmp, output, plan, pages, readers, fills, options, report, {}, what, t_write, syncing, known)


def _place_structure(fd: int, write: "_Structure", structure: Path, pages: dict[str, int], at: int,
                     report: ConversionReport) -> dict[str, int]:
    """Write the structure at byte `at` of the output (offsets moved) and the header at 0; BigTIFF when needed.

    Classic TIFF holds 32-bit offsets (TIFF 6.0): past 4 GiB the structure is written again as
    BigTIFF, which costs the structure only (the pixel data does not move).
    """
    if not write.bigtiff and at + structure.stat().st_size < CLASSIC_LIMIT:
        try:
            move_structure(structure, fd, at)
            return pages
        except OverflowError:
            pass
    if not write.bigtiff:
        report.notes.append("output exceeded 4 GB; written as BigTIFF")
        pages = write.write(structure, True)
    move_structure(structure, fd, at)
    return pages


class _Structure:
    """The TIFF's structure (tags, associated images, copied and empty tiles), written before the pixels.

    Classic TIFF holds 32-bit offsets (TIFF 6.0), so the choice of BigTIFF must be made
    before the re-encoded tiles' size is known: the plan's estimate decides (its limit leaves
    room), and when the appended tiles still take the file past 4 GiB, `fit` rewrites the
    structure as BigTIFF and moves the tiles behind it with one kernel copy, not a re-encode.
    """

    def __init__(self, tmp: Path, work: Path, levels: list[TiffLevel], associated: list[AssociatedImage],
                 options: ConversionOptions, description: str, svs_extra: dict[str, str], icc: bytes | None) -> None:
        self.tmp, self.work, self.levels, self.associated = tmp, work, levels, associated
        self.options, self.description, self.icc = options, description, icc
        self.svs_description = aperio_description(levels, options.quality, svs_extra)
        self.bigtiff = False

    def write(self, path: Path, bigtiff: bool) -> dict[str, int]:
        self.bigtiff = bigtiff
        return write_tiff(path, self.levels, self.associated, layout=self.options.layout, description=self.description,
                          svs_description=self.svs_description, icc=self.icc, bigtiff=bigtiff)

    def first(self, bigtiff: bool, spliced: int, report: ConversionReport) -> dict[str, int]:
        try:
            pages = self.write(self.tmp, bigtiff)
            if not bigtiff and self.tmp.stat().st_size + spliced >= CLASSIC_LIMIT:
                raise ValueError("data too large for classic TIFF once the copied levels are appended; BigTIFF needed")
        except ValueError as exc:
            if bigtiff or "BigTIFF" not in str(exc) and "too large" not in str(exc):
                raise
            report.notes.append("output exceeded 4 GB; written as BigTIFF")
            pages = self.write(self.tmp, True)
        return pages


CLASSIC_LIMIT = 1 << 32
"""File size from which TIFF's 32-bit offsets (classic TIFF) no longer reach every byte."""


def write_verify_publish(tmp: Path, output: Path, plan: LayoutPlan, tiff_levels: list[TiffLevel], associated,
                         readers, fills: dict[int, bytes], options: ConversionOptions, report: ConversionReport, *,
                         pool_spools: dict[int, TileSpool], description: str, svs_extra: dict[str, str],
                         icc: bytes | None, what: str, t_write: float,
                         copies: dict[int, PlannedCopy] | None = None) -> None:
    """Write the TIFF (tiles already encoded) under a temporary name, check it against the source, then give it its final name.

    `copies`: output levels written with empty tiles whose frames are then appended by the
    kernel (converter.conversion.spliced); the file must be BigTIFF when they take it past 4 GiB.
    """
    copies = copies or {}
    write = _Structure(tmp, tmp.parent, tiff_levels, associated, options, description, svs_extra, icc)
    pages = write.first(plan.bigtiff, sum(c.splice.max_bytes for c in copies.values()), report)
    _splice_verify_publish(tmp, output, plan, pages, readers, fills, options, report, pool_spools, what,
                           t_write, copies, {})


def _splice_verify_publish(tmp: Path, output: Path, plan: LayoutPlan, pages: dict[str, int], readers,
                           fills: dict[int, bytes], options: ConversionOptions, report: ConversionReport,
                           pool_spools: dict[int, TileSpool], what: str, t_write: float,
                           copies: dict[int, PlannedCopy], known: dict[int, int]) -> None:
    """Splice the copied levels into the written TIFF, verify it, publish it (`known`: tile bytes of IFDs already summed)."""
    syncing, spliced_sizes = write_spliced(tmp, {pages[f"level-{i}"]: c for i, c in copies.items()}, report)
    _verify_publish(tmp, output, plan, pages, readers, fills, options, report, pool_spools, what, t_write, syncing,
                    known | spliced_sizes)


def _verify_publish(tmp: Path, output: Path, plan: LayoutPlan, pages: dict[str, int], readers,
                    fills: dict[int, bytes], options: ConversionOptions, report: ConversionReport,
                    pool_spools: dict[int, TileSpool], what: str, t_write: float, syncing: Background,
                    known: dict[int, int]) -> None:
    """Verify the written TIFF against the source and publish it (`syncing`: its fsync, started; `known`: IFD tile bytes)."""
    try:
        sizes = _ifd_sizes(tmp, known)
        for rep in report.levels:
            rep.bytes = sizes.get(pages[f"level-{rep.index}"], 0)
        report.timings["write"] = round(time.monotonic() - t_write, 3)

        t = time.monotonic()
        report.checks = verify_tiff(tmp, pages, plan, readers, fills, options.verify_samples, options.max_mad)
        report.timings["verify"] = round(time.monotonic() - t, 3)
        _publish_checked(tmp, output, pages, readers, report, pool_spools, what, syncing)
    finally:
        syncing.wait()


def _publish_checked(tmp: Path, output: Path, pages: dict[str, int], readers, report: ConversionReport,
                     pool_spools: dict[int, TileSpool], what: str, syncing: Background) -> None:
    for reader in readers.values():
        if len(getattr(reader, "colours", {})) > 1:
            report.notes.append("frames of one level were decided differently: " + "; ".join(
                f"{d.decided} ({d.why})" for d in reader.colours.values()))
    failed = [c for c in report.checks if not c.passed]
    if failed:
        details = "; ".join(f"level {c.level} ({c.action}): {c.detail}" for c in failed)
        raise VerificationError(
            f"{what}: the converted TIFF does not match the source ({details}); nothing was published.",
            "Report this with the sidecar JSON; meanwhile try --mode reencode.",
        )
    # A check that shares no assumption with the conversion: the output's own background.
    t = time.monotonic()
    enforce_colour(tmp, pages, report, what)
    report.timings["colour_check"] = round(time.monotonic() - t, 3)
    for spool in pool_spools.values():
        spool.close()
    t = time.monotonic()
    try:
        syncing.join()  # the early fsync of the copied levels: its I/O error must not be lost
        fsync_and_rename(tmp, output)
    except OSError as exc:
        raise OutputError(f"cannot publish {output}: {exc}.", "Check free space and permissions of the output folder.") from exc
    report.timings["fsync_rename"] = round(time.monotonic() - t, 3)


def _ifd_sizes(path: Path, known: dict[int, int]) -> dict[int, int]:
    """Sum of tile bytes per IFD of a written TIFF, for the report (`known`: IFDs already summed).

    Reading a 275,000-tile level's byte counts back through tifffile took ~1 s; spliced levels' are known.
    """
    with tifffile.TiffFile(path) as tif:
        return {i: known[i] if i in known else int(sum(tif.pages[i].databytecounts)) for i in range(len(tif.pages))}
