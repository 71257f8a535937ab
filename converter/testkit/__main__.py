"""``python -m converter.testkit``: write a synthetic series from the command line (demo / benchmark data).

Every :class:`~converter.testkit.spec.SlideSpec` field is a flag (``--width``, ``--transfer-syntax``,
``--label`` / ``--no-label``, ...); the paths written are printed, one a line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from converter.testkit.spec import SlideSpec
from converter.testkit.write import write_series


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converter.testkit OUT [--width ...]``: write a series for demos/benchmarks."""
    parser = argparse.ArgumentParser(prog="python -m converter.testkit", description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, default=None)
    for f in dataclasses.fields(SlideSpec):
        flag, default = f"--{f.name.replace('_', '-')}", f.default
        if f.name == "downsamples":
            parser.add_argument(flag, type=int, nargs="+")
        elif f.name == "pixel_spacing_mm":
            parser.add_argument(flag, type=float, nargs=2)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif default is None or isinstance(default, str):
            parser.add_argument(flag, type=str, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    folder, workers = args.pop("folder"), args.pop("workers")
    for name in ("downsamples", "pixel_spacing_mm"):
        if args[name] is None:
            args.pop(name)
        else:
            args[name] = tuple(args[name])
    spec = SlideSpec(**args)
    for p in write_series(spec, folder, workers=workers):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
