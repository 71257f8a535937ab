"""The `wsi-node` command: one entry point with subcommands."""

from __future__ import annotations

import argparse
import logging
import sys

from converter import cli as convert_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsi-node", description="DICOM receiving node for digital pathology.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert_cli.build_parser(sub.add_parser("convert", help="convert DICOM WSI series to pyramidal TIFF"))
    demo = sub.add_parser("demo", help="generate a synthetic slide and convert it (a first look, no network)")
    demo.add_argument("--data", default="data", help="data folder [%(default)s]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "convert":
        return convert_cli.run_convert(args)
    if args.command == "demo":
        from converter.demo import run_demo

        return run_demo(args.data)
    return 2


if __name__ == "__main__":
    sys.exit(main())
