"""`wsi-node demo`: a first look without a scanner.

Writes a synthetic DICOM slide into the inbox and converts it into the
serving folder, so a new user sees the whole path (DICOM in, verified TIFF
out) in seconds. The node itself (`wsi-node serve`) replaces this later.
"""

from __future__ import annotations

import logging
from pathlib import Path

from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover, safe_name
from converter.testkit import SlideSpec, write_series

log = logging.getLogger("wsi_node.demo")


def run_demo(data: str | Path) -> int:
    data = Path(data)
    inbox, serving = data / "inbox" / "demo", data / "serving"
    serving.mkdir(parents=True, exist_ok=True)
    spec = SlideSpec(width=4096, height=3072, tile_size=256, label=True, overview=True)
    write_series(spec, inbox)
    found = discover([inbox])
    status = 0
    for uid, instances in found.series.items():
        report = convert_series(instances, serving / f"{safe_name(uid)}.tiff", ConversionOptions())
        if report.ok:
            log.info("demo slide converted: %s (%s)", report.output, ", ".join(f"L{lv.index} {lv.action}" for lv in report.levels))
        else:
            log.error("demo conversion failed: %s", report.error)
            status = 1
    return status
