"""`wsi-node convert`: DICOM WSI series in files or folders to pyramidal TIFFs.

The conversion engine (pydicom, numpy, imagecodecs, tifffile: ~0.3 s of imports) is imported
only once a conversion runs, so that `wsi-node --help` and `wsi-node serve|config` do not pay
for it (issue 14). Each series still converts in a process of its own (a codec crash or the
OOM killer fails that series with a message, not the command): one series, the common case,
in a child forked directly (converter.executors.local.run_in_fork, milliseconds), several
through the isolated-process executor, whose forkserver imports the engine again (~0.4 s once).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from concurrent.futures import Future, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from config.effective import convert_settings
from config.errors import ConfigError
from config.flags import add_convert_arguments
from config.settings import ConversionOptions
from converter.conversion.report import ConversionReport

if TYPE_CHECKING:
    from converter.source.discover import Discovery

log = logging.getLogger("wsi_node.convert")


def options_from_args(args: argparse.Namespace) -> ConversionOptions:
    """Engine options from the parsed flags, checked by the option table (ConfigError names the flag).

    The same mapping (and thread split over --max-concurrent) as the batch converter's settings.
    """
    return convert_settings(vars(args)).conversion_options()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="wsi-node convert")
    parser.description = "Convert DICOM whole-slide image series to pyramidal tiled TIFF, verified against the source."
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders (any names, any order, one or more series)")
    parser.add_argument("-o", "--output", default=".", help="output folder, or a .tif/.tiff file name when the input is one series [current folder]")
    add_convert_arguments(parser)  # engine settings and --max-concurrent, from config.options
    return parser


def _target(output: Path, series_uid: str, single: bool) -> Path:
    from converter.source.discover import safe_name

    if output.suffix.lower() in (".tif", ".tiff") and single:
        return output
    return output / f"{safe_name(series_uid)}.tiff"


def _died(uid: str, exc: BaseException) -> ConversionReport:
    return ConversionReport(series_uid=uid, study_uid="", error=f"the conversion process died: {exc!r}. Fix: report this as a bug.")


def _summary(report: ConversionReport) -> str:
    if not report.ok:
        return f"FAILED series {report.series_uid}: {report.error}"
    modes = ", ".join(f"L{lv.index} {lv.action}" for lv in report.levels)
    return f"converted series {report.series_uid} -> {report.output} ({modes}; {report.timings.get('total', 0):.1f} s)"


def run_convert(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        print(f"wsi-node convert: {exc}", file=sys.stderr)
        return 2
    from converter.conversion.early_copy import start_forked_early_copy

    # The kernel copy of the frames starts now, while the headers are read (converter.tiff.forked_copier.ForkedCopier).
    early = start_forked_early_copy(args.inputs, Path(args.output), options)
    try:
        _remove_stale_scratch(Path(args.output))
        return _convert_all(args, options, early)
    finally:
        if early is not None:
            early.dispose()


def _remove_stale_scratch(output: Path) -> None:
    """What killed commands left in the output's folder goes first (while the early copy already runs)."""
    from converter.conversion.run import remove_stale_scratch

    folder = output.parent if output.suffix.lower() in (".tif", ".tiff") else output
    for path in remove_stale_scratch(folder):
        log.info("removed %s, left by a conversion whose process was killed before it could clean up", path)


def _convert_all(args: argparse.Namespace, options: ConversionOptions, early) -> int:
    from converter.source.discover import discover

    found = discover(args.inputs)
    failures = 0
    for rej in found.rejected:
        log.error("%s", rej.message)
        failures += 1
    if not found.series:
        log.error("no whole-slide image series found in %s", ", ".join(args.inputs))
        return 1
    output = Path(args.output)
    single = len(found.series) == 1
    (output.parent if output.suffix.lower() in (".tif", ".tiff") and single else output).mkdir(parents=True, exist_ok=True)
    reports: list[ConversionReport] = []
    incomplete = {r.series_uid: r for r in reversed(found.rejected) if r.series_uid in found.series}
    todo: dict[str, list] = {}
    for uid, instances in found.series.items():
        if uid in incomplete:
            # Converting the readable rest would publish a smaller slide that looks whole.
            report = ConversionReport(series_uid=uid, study_uid=instances[0].study_uid, error=(
                f"series {uid}: not converted because an instance file of it was rejected "
                f"({incomplete[uid].message}); the slide would be incomplete. Fix: replace that file and convert again."))
            reports.append(report)
            log.error("%s", _summary(report))
            continue
        todo[uid] = instances
    from converter.conversion.convert import convert_series

    progress = None
    if len(todo) == 1 and threading.active_count() == 1:
        from converter.executors.local import run_in_fork

        ((uid, instances),) = todo.items()
        try:
            target = _target(output, uid, single)
            report = run_in_fork(convert_series, instances, target, options, early=early if target == output else None)
        except Exception as exc:  # the conversion process died (e.g. a codec crashed)
            report = _died(uid, exc)
            if getattr(exc, "pid", None):  # a child killed outright cannot clean up: its scratch goes here
                from converter.conversion.run import remove_scratch

                remove_scratch(_target(output, uid, single), exc.pid)
        reports.append(_reported(report, found, uid, None))
    elif todo:
        from converter.executors.local import make_executor

        if early is not None:  # several series: each conversion copies its own
            early.dispose()

        if sys.stderr.isatty():
            from tqdm import tqdm

            progress = tqdm(total=len(todo), unit="slide", desc="converting")
        with make_executor(args.max_concurrent, start_method="fork") as pool:
            futures: dict[Future, str] = {pool.submit(convert_series, instances, _target(output, uid, single), options): uid
                                          for uid, instances in todo.items()}
            for fut in as_completed(futures):
                uid = futures[fut]
                try:
                    report = fut.result()
                except Exception as exc:  # the worker process died (e.g. a codec crashed)
                    report = _died(uid, exc)
                reports.append(_reported(report, found, uid, progress))
    if progress is not None:
        progress.close()
    failures += sum(1 for r in reports if not r.ok)
    ok = sum(1 for r in reports if r.ok)
    log.info("%d of %d series converted and verified; %d problem(s)", ok, len(reports), failures)
    return 0 if failures == 0 else 1


def _reported(report: ConversionReport, found: Discovery, uid: str, progress) -> ConversionReport:
    """Log one finished series (its summary line, and its notes when it succeeded)."""
    report.notes[:0] = found.notes.get(uid, [])
    line = _summary(report)
    if progress is not None:
        progress.write(line)
        progress.update(1)
    elif report.ok:
        log.info("%s", line)
    else:
        log.error("%s", line)
    if report.ok:
        for note in report.notes:
            log.info("series %s: %s", uid, note)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_convert(build_parser().parse_args(argv))
