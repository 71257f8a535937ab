"""Log output: readable lines by default, JSON lines for journald/ELK.

Messages name files, UIDs and AE titles, never patient names or IDs: the
converter never puts patient attributes into a message in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips chatter at INFO
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise; we log our own


def early_log_format(argv: list[str], environ: dict[str, str] | None = None) -> str:
    """The log format asked for on the command line or in the environment, before settings are loaded,
    so that even warnings about the settings themselves come out as JSON when JSON was asked for."""
    import os

    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1]
    value = (environ if environ is not None else os.environ).get("CONVERTER_LOG_FORMAT", "text")
    return value if value in ("text", "json") else "text"
