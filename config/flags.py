"""The command lines of every entry point, built from the option table (config.options).

Flags, metavars, help texts and the defaults shown in --help all come from
the table, so `batch-converter --help`, `wsi-node serve --help` and
`wsi-node convert --help` cannot drift from what the settings code does.
Their help keeps the wording each has always had:

* pipeline settings (batch-converter, and serve): `[default: 85; env CONVERTER_QUALITY]`;
* node settings (serve): `[11112] (env WSI_NODE_PORT)`, the default shown being
  what the environment makes it (so `--help` in a unit's environment tells the truth);
* convert: `[85]`, and no environment: convert takes flags only.

Flag arguments are parsed by config.sources.parse_text, the same parser as the
environment's, so `--quality high` and `CONVERTER_QUALITY=high` get the same
message. Precedence is not decided here but in config.layers: the parsers of
batch-converter and serve default every option to argparse.SUPPRESS, so the
namespace holds exactly what the user typed (`--quality 85` must beat
CONVERTER_QUALITY=60 even though 85 is the default). Abbreviations are off: a
unit file relying on `--watch-int` would break the day another option starting
like that is added.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.layers import Origin, fmt, resolve
from config.options import (
    BATCH, CONFIG_ENV, CONFIG_FLAG, CONVERT, NODE_OPTIONS, PIPELINE_OPTIONS, SERVE, Option, options_for,
)
from config.sources import env_layer, parse_text

GROUP_TITLES = {
    "folders": "folders",
    "conversion": "conversion",
    "operation": "operation",
    "node": "node (each also settable as WSI_NODE_<NAME>, e.g. WSI_NODE_AE_TITLE, or under `node:` in the --config YAML)",
    "tls": "DICOM TLS (WSI_NODE_TLS_*)",
    "http": "HTTP: DICOMweb STOW-RS (POST /dicom-web/studies), health, metrics (each also settable as WSI_NODE_<NAME>)",
}
_PIPELINE_METAVAR = {"folder": "DIR", "int": "N", "float": "SECONDS", "text": "TEXT"}


def flag_type(opt: Option) -> Callable[[str], Any]:
    """argparse converter, so a bad number is reported by argparse with the flag and the usage line."""

    def convert(text: str) -> Any:
        try:
            return parse_text(opt, text, Origin.flag_of(opt))
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = {"int": "whole number", "float": "number"}.get(opt.kind, opt.kind)
    return convert


class ListFlag(argparse.Action):
    """A repeatable flag of a list setting; each flag is one entry.

    The flags replace the list of lower layers (the default), except for
    merged lists (tokens, users), which keep the lower layers' entries after
    the flags' own, as config.layers.resolve orders them.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, merged: bool = False, **kwargs: Any) -> None:
        self.merged = merged
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        lower = self.default if isinstance(self.default, list) else []
        current = getattr(namespace, self.dest, None)
        if current is None or current is lower:
            flags: list[str] = []
        else:
            flags = current[: len(current) - len(lower)] if self.merged else current
        setattr(namespace, self.dest, [*flags, values, *(lower if self.merged else [])])


def _add_pipeline(group: Any, opt: Option) -> None:
    if opt.kind == "bool":
        group.add_argument(*opt.flags, dest=opt.field, action="store_true", help=f"{opt.help} [env {opt.env}]")
        return
    default = fmt(opt.default)
    if opt.kind == "folder" and not default.startswith((".", "/")):
        default = "./" + default
    kwargs: dict[str, Any] = {"dest": opt.field, "help": f"{opt.help} [default: {default}; env {opt.env}]"}
    if opt.kind == "choice":
        kwargs["choices"] = opt.choices
    else:
        kwargs["type"] = flag_type(opt)
        kwargs["metavar"] = opt.metavar or _PIPELINE_METAVAR[opt.kind]
    group.add_argument(*opt.flags, **kwargs)


def _add_node(group: Any, opt: Option, base: Mapping[str, Any], cli_only: bool) -> None:
    shown = base.get(opt.field, opt.default)
    kwargs: dict[str, Any] = {"dest": opt.field, "default": argparse.SUPPRESS if cli_only else shown}
    if opt.kind == "bool":
        kwargs["action"] = "store_true"
    elif opt.kind == "list":
        kwargs.update(action=ListFlag, merged=opt.merged)
        if not cli_only:
            kwargs["default"] = list(shown)
    else:
        kwargs["type"] = flag_type(opt)
    if opt.kind == "file" or opt.metavar:
        kwargs["metavar"] = opt.metavar or "FILE"
    value = "" if opt.secret or opt.kind == "list" else f" [{fmt(shown)}]"
    group.add_argument(*opt.flags, help=f"{opt.help}{value} (env {opt.env})", **kwargs)


def batch_parser(prog: str = BATCH) -> argparse.ArgumentParser:
    """The batch converter's command line (and the pipeline part of `wsi-node serve`'s)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        description="Convert DICOM whole-slide images dropped into an inbox folder to pyramidal TIFFs.",
        epilog=(
            "Settings come from defaults < YAML config file < environment (CONVERTER_*) < command line. "
            "Paths are relative to the working directory."
        ),
    )
    parser.add_argument(
        CONFIG_FLAG, metavar="FILE", type=Path,
        help=f"YAML file with settings (keys as below, e.g. tile_size) [env {CONFIG_ENV}]",
    )
    groups = {name: parser.add_argument_group(GROUP_TITLES[name]) for name in dict.fromkeys(o.group for o in PIPELINE_OPTIONS)}
    for opt in PIPELINE_OPTIONS:
        _add_pipeline(groups[opt.group], opt)
    return parser


def node_parser(base: Mapping[str, Any] | None = None, cli_only: bool = False) -> argparse.ArgumentParser:
    """The node's flags of `wsi-node serve`, without -h.

    Defaults (and the values shown in the help) are `base`, by default the
    table's defaults under the WSI_NODE_* environment; cli_only: no defaults
    at all, so the namespace holds exactly what was typed.
    """
    if base is None:
        base = {} if cli_only else resolve(NODE_OPTIONS, [env_layer(os.environ, NODE_OPTIONS)]).values
    parser = argparse.ArgumentParser(prog=SERVE, add_help=False, allow_abbrev=False)
    groups = {name: parser.add_argument_group(GROUP_TITLES[name]) for name in dict.fromkeys(o.group for o in NODE_OPTIONS)}
    for opt in NODE_OPTIONS:
        _add_node(groups[opt.group], opt, base, cli_only)
    return parser


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings `wsi-node convert` takes, with real defaults: it reads no environment and no file."""
    for opt in options_for(CONVERT):
        text = opt.convert_help or opt.help
        if opt.kind == "bool":
            parser.add_argument(*opt.flags, dest=opt.field, action="store_true", help=text)
        elif opt.kind == "choice":
            parser.add_argument(*opt.flags, dest=opt.field, choices=opt.choices, default=opt.default,
                                help=f"{text} [{fmt(opt.default)}]")
        else:
            parser.add_argument(*opt.flags, dest=opt.field, type=flag_type(opt), default=opt.default,
                                help=f"{text} [{fmt(opt.default)}]")


def parse_command_line(command: str, argv: Sequence[str]) -> tuple[dict[str, Any], Path | None]:
    """The settings typed on the command line of batch-converter or serve, and --config.

    argparse exits (status 2) for a bad command line, as every CLI does.
    """
    typed: dict[str, Any] = {}
    rest = list(argv)
    if command == SERVE:
        known, rest = node_parser(cli_only=True).parse_known_args(rest)
        typed.update(vars(known))
    elif command != BATCH:
        raise ValueError(f"{command!r} takes no layered settings")
    typed.update(vars(batch_parser().parse_args(rest)))
    return typed, typed.pop("config", None)
