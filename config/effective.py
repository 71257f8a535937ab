"""The effective settings of each entry point: all sources layered, values checked, typed.

* load_batch_settings: `batch-converter` (pipeline settings; CONVERTER_CONFIG);
* effective_settings: `wsi-node serve` and `wsi-node config check/show`
  (pipeline and node settings; WSI_NODE_CONFIG or CONVERTER_CONFIG);
* convert_settings: `wsi-node convert` (engine settings, flags only).

Each reads the command line (config.flags), the YAML file and the environment
(config.sources) and lets config.layers.resolve decide who wins. Values are
checked here (types, ranges, choices) and never touch the file system apart
from reading the config file: the folder checks are config.folders'
validate_batch_settings, which a dry run or a `--help` must not trigger.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.flags import parse_command_line
from config.layers import Layer, Origin, Resolved, resolve
from config.options import BATCH, BY_FIELD, CONFIG_ENVS, CONVERT, NODE_OPTIONS, PIPELINE_OPTIONS, SERVE, options_for
from config.settings import BatchSettings
from config.sources import (
    check_value, config_file_from, env_layer, file_layer, read_config_file, value_problems, warn_unknown_env,
)

_PIPELINE_FIELDS = tuple(o.field for o in PIPELINE_OPTIONS)


def _layered(command: str, argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Resolved, Path | None]:
    """Every setting of an entry point from defaults < YAML file < environment < flags, unchecked."""
    options = options_for(command)
    typed, config_arg = parse_command_line(command, argv)
    flags: Layer = {field: (value, Origin.flag_of(BY_FIELD[field])) for field, value in typed.items()}
    found = config_file_from(config_arg, environ, CONFIG_ENVS[command])
    file: Layer = {}
    if found is not None:
        file = file_layer(read_config_file(*found), found[0], with_node=command == SERVE)
    env = env_layer(environ, options)
    warn_unknown_env(environ, options)
    return resolve(options, [file, env, flags]), found[0] if found else None


def _check_pipeline(settings: BatchSettings, resolved: Resolved) -> None:
    for opt in PIPELINE_OPTIONS:
        check_value(opt, getattr(settings, opt.field), resolved.origin(opt.field))


def load_batch_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[BatchSettings, dict[str, str]]:
    """The batch converter's settings, values checked.

    Returns the settings and, per field, where its value came from:
    "default", "file:<path>", "env:<NAME>" or "cli". Raises ConfigError for
    bad values and config files; argparse exits (status 2) for bad command
    lines. Folders are not checked here: call
    validate_batch_settings(settings, sources=sources) next.
    """
    argv = sys.argv[1:] if argv is None else argv
    resolved, _ = _layered(BATCH, argv, os.environ if environ is None else environ)
    settings = BatchSettings(**{f: resolved.values[f] for f in _PIPELINE_FIELDS})
    _check_pipeline(settings, resolved)
    return settings, resolved.sources(_PIPELINE_FIELDS)


@dataclasses.dataclass
class Effective:
    """Every setting of `wsi-node serve` after layering, with where each came from."""

    batch: BatchSettings
    batch_sources: dict[str, str]
    node: argparse.Namespace
    """The node settings by field (ae_title, port, http_token, ...), as scp.cli builds DimseSettings/HttpSettings from them."""
    node_sources: dict[str, str]
    config_file: Path | None

    def node_origin(self, field: str) -> Origin:
        return Origin.from_source(BY_FIELD[field], self.node_sources[field])

    def node_value_problems(self) -> list[ConfigError]:
        """Node values outside their range (ports, AE title, sizes), each naming the option as written."""
        return value_problems(NODE_OPTIONS, lambda f: getattr(self.node, f), self.node_origin)


def effective_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Effective:
    """Layer defaults < YAML (pipeline keys + `node:`) < env (CONVERTER_*, WSI_NODE_*) < flags.

    Pipeline values are checked (ConfigError); node values are not, so
    `config check` can list all of their problems: see Effective.node_value_problems.
    The folders the user did not set default to <node data>/inbox, /serving,
    ... rather than ./inbox: a node keeps everything under one data folder.
    """
    resolved, path = _layered(SERVE, argv, os.environ if environ is None else environ)
    settings = BatchSettings(**{f: resolved.values[f] for f in _PIPELINE_FIELDS})
    _check_pipeline(settings, resolved)
    batch_sources = resolved.sources(_PIPELINE_FIELDS)
    data = Path(resolved.values["data"])
    under_data: dict[str, Any] = {}
    for opt in PIPELINE_OPTIONS:
        if opt.kind == "folder" and batch_sources[opt.field] == "default":
            under_data[opt.field] = data / opt.default.name
            batch_sources[opt.field] = f"default (under data {data})"
    node_fields = tuple(o.field for o in NODE_OPTIONS)
    node = argparse.Namespace(**{f: resolved.values[f] for f in node_fields})
    return Effective(dataclasses.replace(settings, **under_data), batch_sources, node, resolved.sources(node_fields), path)


def check_flags(values: Mapping[str, Any]) -> None:
    """Check values that can only have come from flags (settings the caller got from argparse), naming the flag."""
    for field, value in values.items():
        opt = BY_FIELD[field]
        check_value(opt, value, Origin.flag_of(opt))


def convert_settings(values: Mapping[str, Any]) -> BatchSettings:
    """The settings of `wsi-node convert` from its parsed flags (dest -> value), checked by the table.

    A BatchSettings, so that convert maps them to engine options (and splits
    threads) exactly as the batch converter and the node do.
    """
    mine = {o.field: values[o.field] for o in options_for(CONVERT)}
    check_flags(mine)
    return BatchSettings(**mine)
