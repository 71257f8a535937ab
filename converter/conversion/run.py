"""The wrapper every conversion runs in: scratch names, publication of the report, errors, cleanup.

Both kinds of conversion (a DICOM series in convert.py, a plain TIFF in plain_tiff.py) write
the TIFF under a temporary name beside the output and spool tiles to a work folder there, and
must end the same way: the sidecar JSON is written only after the TIFF was published; every
failure becomes the report's `error` instead of an exception (the executor runs one
conversion per task and needs a plain value back); the scratch files go whatever happened;
`timings.total` is the whole wall time. Keeping that in one place keeps the two alike.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from config.errors import WsiNodeError
from converter.conversion.report import ConversionReport
from converter.durable import atomic_write_text


def sidecar_path(output: Path) -> Path:
    """Where the report of `output` is published: the same name with .json."""
    return output.with_suffix(".json")


def run_conversion(output: Path, report: ConversionReport, body: Callable[[Path, Path], None],
                   describe: Callable[[Exception], str]) -> ConversionReport:
    """Run `body(work, tmp)`, which must write and publish `output`; then publish the report.

    `work` is a scratch folder (created by `body` when it needs it) and `tmp` the temporary
    name of the TIFF, both beside `output` and removed afterwards. A `WsiNodeError` (bad input,
    no space, failed verification) becomes `report.error` as it is; any other exception is
    turned into the error text by `describe` (which may also log it). Never raises for those.
    """
    t0 = time.monotonic()
    work = output.parent / f".{output.name}.{os.getpid()}.work"
    tmp = output.parent / f".{output.name}.{os.getpid()}.tmp"
    try:
        body(work, tmp)
        report.status = "published"
        report.output = str(output)
        report.timings["total"] = round(time.monotonic() - t0, 3)
        atomic_write_text(sidecar_path(output), report.to_json())
    except WsiNodeError as exc:
        report.error = str(exc)
    except Exception as exc:  # a bug or an unexpected library failure: still a clear, per-conversion failure
        report.error = describe(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        report.timings["total"] = round(time.monotonic() - t0, 3)
    return report
