"""Re-encoding: the pixels of every output level that is not copied, from its source level.

Every chain (a source level and the generated levels below it) is cut into blocks
(converter.tiff.blocks); the blocks of all chains form one stream of tasks, so the worker
threads stay busy across the end of one chain and the start of the next, and memory is a
few blocks whatever the slide's size. Readers without blocks (libvips over a plain TIFF,
whose strips are cheapest read whole) keep the strip cascade. The encoded tiles are either
appended straight to the temporary TIFF (`sink`, converter.tiff.pyramid.TileAppender: written
once) or spooled to the conversion's work folder for the TIFF writer (written twice; for
callers that need the pixels before the TIFF's structure, e.g. a generated svs thumbnail).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from config.settings import ConversionOptions
from converter.conversion.report import ConversionReport
from converter.tiff.blocks import BlockPyramid, run_tasks
from converter.tiff.layout import LayoutPlan
from converter.tiff.pyramid import AppendedLevel, Cascade, TileAppender, TileSpool


def encode_chains(plan: LayoutPlan, readers, work: Path, options: ConversionOptions, pool, report: ConversionReport,
                  sink: TileAppender | None = None) -> dict[int, TileSpool | AppendedLevel]:
    """Encode every chain that has anything to encode; returns the tiles' home per output level.

    `sink`: append every tile to it (it must know every level that needs pixels); without it
    each level is spooled to the work folder.
    """
    spools: dict[int, TileSpool | AppendedLevel] = {}
    # Encode-time target a little stricter than the verification limit, which may use a
    # slightly different reference for deep generated levels.
    max_mad = options.max_mad * 0.9
    done: list[tuple[list, object]] = []
    blocked: list[tuple[BlockPyramid, object]] = []
    for chain in plan.chains():
        head = chain[0]
        if not any(lv.needs_pixels for lv in chain):
            continue
        stages = []
        for lv in chain:
            spool = None
            if lv.needs_pixels:
                spool = spools[lv.index] = (sink.level(lv.index) if sink is not None
                                            else TileSpool(str(work / f"level-{lv.index}.tiles")))
            stages.append((lv.width, lv.height, spool))
        reader = readers[head.source]
        if hasattr(reader, "read_block"):
            pyramid = BlockPyramid(stages, plan.tile_width, plan.tile_height, options.quality, max_mad,
                                   reader.samples, str(work / f"chain-{head.index}"))
            blocked.append((pyramid, reader))
            done.append((chain, pyramid))
        else:
            cascade = Cascade(stages, plan.tile_width, plan.tile_height, options.quality, pool, max_mad=max_mad)
            for strip in reader.strips():
                cascade.push(strip)
            cascade.finish()
            done.append((chain, cascade))
    try:
        # Two blocks per thread in flight: one being worked on, one ready to start.
        run_tasks(itertools.chain.from_iterable(p.tasks(r) for p, r in blocked), pool, 2 * max(1, options.threads))
    finally:
        for pyramid, _ in blocked:
            pyramid.close()
    for pyramid, _ in blocked:
        pyramid.check()
    for chain, producer in done:
        for lv, stage in zip(chain, producer.stages):
            if stage.spool is not None:
                report.levels[lv.index].quality = options.quality
            if stage.raised_quality:
                report.levels[lv.index].tiles_quality_raised = stage.raised_quality
                report.levels[lv.index].quality = stage.max_quality
    return spools
