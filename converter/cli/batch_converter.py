"""`batch-converter`: the inbox pipeline as a one-shot pass or a watching daemon.

    batch-converter --inbox /data/inbox --serving /data/serving --archive /data/archive [--watch]

Exit codes: 0 when everything handled in a one-shot pass succeeded (and on a
clean SIGTERM/SIGINT shutdown), 1 when something failed or was quarantined,
2 for invalid settings.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from config.errors import ConfigError
from config.effective import load_batch_settings
from config.folders import validate_batch_settings
from converter.executors import make_configured_executor
from converter.cli.logs import early_log_format, setup_logging
from converter.inbox.pipeline import InboxPipeline

log = logging.getLogger("wsi_node.batch")


def main(argv: list[str] | None = None) -> int:
    setup_logging(early_log_format(sys.argv[1:] if argv is None else argv))
    try:
        settings, sources = load_batch_settings(argv)
        setup_logging(settings.log_format)
        for line in validate_batch_settings(settings, create_dirs=not settings.dry_run, sources=sources):
            log.info("%s", line)
    except ConfigError as exc:
        print(f"batch-converter: {exc}", file=sys.stderr)
        return 2

    if settings.dry_run:
        pipeline = InboxPipeline(settings, executor=None)
        pipeline.dry_run()
        return 0

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the conversions in progress, taking no new work", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:  # local processes, or a Dask cluster (--executor dask: connects and checks the shared paths, docs/scale-out.md)
        executor = make_configured_executor(settings, start_method="forkserver" if settings.watch else "fork")
    except ConfigError as exc:
        print(f"batch-converter: {exc}", file=sys.stderr)
        return 2
    pipeline = InboxPipeline(settings, executor)
    try:
        pipeline.recover()
        if not settings.watch:
            summary = pipeline.run_pass()
            pipeline.collect(wait=True)
            waiting = f"; {len(summary.waiting)} drop(s) still being written" if summary.waiting else ""
            log.info("pass complete: %d published, %d failed or quarantined%s", pipeline.published, pipeline.failures + summary.quarantined, waiting)
            return 0 if pipeline.failures == 0 and summary.quarantined == 0 else 1
        log.info("watching %s every %g s", settings.inbox, settings.watch_interval)
        while not stop.is_set():
            pipeline.run_pass()
            pipeline.collect(wait=False)
            # Sleep until the next scan, waking early for finished jobs or a stop request.
            deadline = settings.watch_interval
            while deadline > 0 and not stop.is_set():
                step = min(deadline, 1.0)
                if pipeline.jobs:
                    pipeline.collect(wait=False, timeout=step)
                else:
                    stop.wait(step)
                deadline -= step
        pipeline.collect(wait=True)
        log.info("stopped cleanly")
        return 0
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        pipeline.store.close()


if __name__ == "__main__":
    sys.exit(main())
