"""Staging of Dask conversions: a worker writes, only the node that owns the task publishes (issue 13).

Why: a task keeps running on its worker when the node that submitted it is killed, or when the
scheduler restarts (a running Python thread cannot be stopped). If that stale task renamed its TIFF
into serving itself, it could publish after the restarted node converted the series again, or beside
a newer version. So on Dask a conversion's output path is rewritten, before the task is sent, into a
hidden per-task folder in serving, `.dask-<key>.work/<name>` (same filesystem, so publishing is one
atomic rename, PS3.4 gives no ordering here: this is the node's own rule). The worker converts and
verifies there as usual (converter.conversion.run); the node, when the task's future finishes and
only for a future it owns, checks the result on its side (dask.check_published), renames the TIFF
into place and writes the report beside it (TIFF first, report second, as run_conversion does).

Nothing else ever moves a staged file into serving: a stale task's staging folder is removed by
`Staging.sweep` (every interval, any key this node does not own) and by the pipeline's start-up
clean-up (it removes hidden `.work` entries in serving), so it cannot publish, and what it leaves
goes. Passthrough moves are not staged: they move an original out of the inbox, and a swept staging
folder would lose it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from converter.conversion.report import ConversionReport
from converter.durable import atomic_write_text, fsync_dir

log = logging.getLogger("wsi_node.executor")

PREFIX = ".dask-"
SUFFIX = ".work"
STAGED_FUNCTIONS = frozenset({"convert_series"})
"""Conversions (through converter.conversion.run) whose output argument is staged."""


def _unwrapped_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "fn", None) or getattr(fn, "func", None) or fn  # MemoryBudget.fn, functools.partial.func
    return getattr(inner, "__name__", "")


class Staging:
    """Per-task staging folders under `serving`; `owned` says which keys this node may publish."""

    def __init__(self, serving: Path, owned: Callable[[], Iterable[str]]) -> None:
        self.serving = Path(serving).resolve()
        self.owned = owned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def folder(self, key: str) -> Path:
        return self.serving / f"{PREFIX}{key}{SUFFIX}"

    def rewrite(self, key: str, fn: Callable[..., Any], args: tuple) -> tuple[tuple, Path | None]:
        """(args with the output inside serving moved into the task's staging folder, the final output or None)."""
        if _unwrapped_name(fn) not in STAGED_FUNCTIONS:
            return args, None
        out = list(args)
        for i, arg in enumerate(out):
            if isinstance(arg, (str, Path)) and Path(arg).parent.resolve() == self.serving:
                out[i] = self.folder(key) / Path(arg).name
                return tuple(out), Path(self.serving / Path(arg).name)
        return args, None

    def publish(self, key: str, result: Any, final: Path) -> Any:
        """Rename a published result from the staging folder to `final`, rewrite its report; remove the folder."""
        folder = self.folder(key)
        try:
            if isinstance(result, ConversionReport) and result.ok and result.output:
                staged = Path(result.output)
                if staged.parent != folder:
                    raise RuntimeError(f"the worker published {staged}, outside its staging folder {folder}")
                os.replace(staged, final)
                fsync_dir(final.parent)
                result.output = str(final)
                atomic_write_text(final.with_suffix(".json"), result.to_json())
                log.info("task %s: published %s from its staging folder", key, final)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return result

    def discard(self, key: str) -> None:
        shutil.rmtree(self.folder(key), ignore_errors=True)

    def leftovers(self) -> list[Path]:
        """Staging folders of keys this node does not own (stale tasks, an earlier run)."""
        try:  # listed before the owned keys are read: a folder of a task submitted meanwhile is owned by then
            entries = list(self.serving.iterdir())
        except OSError:
            return []
        owned = {self.folder(k).name for k in self.owned()}
        return [p for p in entries if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX) and p.name not in owned]

    def sweep(self) -> list[Path]:
        removed = []
        for path in self.leftovers():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed the staging folder %s of a task this node does not own (a stale task)", path)
            removed.append(path)
        return removed

    def start_sweeping(self, interval: float) -> None:
        """Sweep now and then every `interval` seconds in a daemon thread, until stop()."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sweep()
                except Exception:  # a sweep must never stop the executor
                    log.exception("sweeping staging folders failed")

        self.sweep()
        self._thread = threading.Thread(target=loop, name="dask-staging-sweep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


__all__ = ["Staging", "STAGED_FUNCTIONS"]
