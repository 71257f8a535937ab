"""Re-encoding: the pixels of every output level that is not copied, from its source level.

One streaming pass per chain (a source level and the generated levels below it);
the encoded tiles are spooled to the conversion's work folder for the TIFF writer.
"""

from __future__ import annotations

from pathlib import Path

from config.settings import ConversionOptions
from converter.conversion.report import ConversionReport
from converter.tiff.layout import LayoutPlan
from converter.tiff.pyramid import Cascade, TileSpool


def encode_chains(plan: LayoutPlan, readers, work: Path, options: ConversionOptions, pool, report: ConversionReport) -> dict[int, TileSpool]:
    """One streaming pass per chain that has anything to encode; returns the spooled tiles per output level."""
    spools: dict[int, TileSpool] = {}
    for chain in plan.chains():
        head = chain[0]
        if not any(lv.needs_pixels for lv in chain):
            continue
        stages = []
        for lv in chain:
            spool = None
            if lv.needs_pixels:
                spool = spools[lv.index] = TileSpool(str(work / f"level-{lv.index}.tiles"))
            stages.append((lv.width, lv.height, spool))
        # Encode-time target a little stricter than the verification limit, which may use a
        # slightly different reference for deep generated levels.
        cascade = Cascade(stages, plan.tile_width, plan.tile_height, options.quality, pool, max_mad=options.max_mad * 0.9)
        for strip in readers[head.source].strips():
            cascade.push(strip)
        cascade.finish()
        for lv, stage in zip(chain, cascade.stages):
            if stage.spool is not None:
                report.levels[lv.index].quality = options.quality
            if stage.raised_quality:
                report.levels[lv.index].tiles_quality_raised = stage.raised_quality
                report.levels[lv.index].quality = stage.max_quality
    return spools
