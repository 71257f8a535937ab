"""Batch converter settings from defaults < YAML file < environment < command line.

The batch converter runs unattended (systemd, containers), so most settings
arrive through environment files or a YAML file written by someone else long
ago. Every error therefore names the option exactly as it was written
(`--quality`, `CONVERTER_QUALITY`, `quality` in /etc/...yaml) and says how to
fix it, and every value's origin is reported so a log line can explain why
the converter uses the folder it uses.

Two steps, on purpose:

* load_batch_settings parses and checks values (types, ranges, choices) and
  never touches the file system apart from reading the config file;
* validate_batch_settings checks the folders and creates the missing output
  folders, which a dry run or a `--help` must not do.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from config.errors import ConfigError
from config.node_options import NODE_SECTION, node_section
from config.settings import ICC_POLICIES, LAYOUTS, LOG_FORMATS, MODES, NAMINGS, BatchSettings

log = logging.getLogger("wsi_node.config")

ENV_PREFIX = "CONVERTER_"
CONFIG_ENV = "CONVERTER_CONFIG"
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


@dataclass(frozen=True)
class BatchOption:
    """One setting: its BatchSettings field, CLI flags, env var and value kind.

    One table drives the parser, the env and YAML layers and the messages, so
    a new setting cannot end up with a flag but no env var.
    """

    field: str
    kind: str
    """path, int, float, bool (a CLI flag) or choice."""
    flags: tuple[str, ...]
    help: str
    choices: tuple[str, ...] = ()
    group: str = "conversion"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def dashed_key(self) -> str:
        return self.field.replace("_", "-")


BATCH_OPTIONS: tuple[BatchOption, ...] = (
    BatchOption("inbox", "path", ("--inbox", "-i"), "folder where slides are dropped; must exist", group="folders"),
    BatchOption("serving", "path", ("--serving", "-s"), "folder for finished TIFFs (created if missing)", group="folders"),
    BatchOption("archive", "path", ("--archive", "-a"), "converted sources are moved here (created if missing)", group="folders"),
    BatchOption("quarantine", "path", ("--quarantine",), "failed sources are moved here (created if missing)", group="folders"),
    BatchOption("state_dir", "path", ("--state-dir",), "bookkeeping that survives restarts (created if missing)", group="folders"),
    BatchOption("quality", "int", ("--quality", "-q"), "JPEG quality 1-100 of re-encoded tiles"),
    BatchOption("tile_size", "int", ("--tile-size", "-t"), "tile size of re-encoded pyramids, a multiple of 16"),
    BatchOption("max_concurrent", "int", ("--max-concurrent", "-c"), "slides converted in parallel", group="operation"),
    BatchOption("watch", "bool", ("--watch", "-w"), "keep running and poll the inbox", group="operation"),
    BatchOption("watch_interval", "float", ("--watch-interval",), "seconds between inbox scans in watch mode", group="operation"),
    BatchOption("dry_run", "bool", ("--dry-run", "-n"), "only report what would be done", group="operation"),
    BatchOption("mode", "choice", ("--mode",), "copy JPEG frames, re-encode, or auto (copy where possible)", MODES),
    BatchOption("layout", "choice", ("--layout",), "generic pyramidal TIFF, or Aperio-compatible svs", LAYOUTS),
    BatchOption("icc", "choice", ("--icc",), "strip the ICC profile or keep (embed) it", ICC_POLICIES),
    BatchOption("no_label", "bool", ("--no-label",), "drop the label image (it often shows patient identity)"),
    BatchOption(
        "settle_seconds", "float", ("--settle-seconds",),
        "a drop counts only after size and mtime were stable this long", group="operation",
    ),
    BatchOption(
        "naming", "choice", ("--naming",),
        "output names: <SeriesInstanceUID>.tiff or the dropped file/folder name", NAMINGS, group="operation",
    ),
    BatchOption("log_format", "choice", ("--log-format",), "text for terminals, json for log collectors", LOG_FORMATS, group="operation"),
)
OPTIONS_BY_FIELD: dict[str, BatchOption] = {o.field: o for o in BATCH_OPTIONS}
_YAML_KEYS: dict[str, BatchOption] = {k: o for o in BATCH_OPTIONS for k in (o.field, o.dashed_key)}
_DEFAULTS = BatchSettings()

if set(OPTIONS_BY_FIELD) != {f.name for f in fields(BatchSettings)}:  # pragma: no cover - caught by any test run
    raise RuntimeError("config.loader.BATCH_OPTIONS and BatchSettings disagree; add the new field to both.")


# --------------------------------------------------------------------------- origins


@dataclass(frozen=True)
class _Origin:
    """Where one value came from, to name it in messages the way the user wrote it."""

    kind: str
    """default, file, env or cli."""
    name: str
    """The flag, env var or YAML key as written."""
    file: Path | None = None

    @property
    def source(self) -> str:
        if self.kind == "file":
            return f"file:{self.file}"
        if self.kind == "env":
            return f"env:{self.name}"
        return self.kind

    def show(self, value: Any) -> str:
        """The value as the user wrote it, e.g. `--quality 0` or `CONVERTER_QUALITY=0 (environment)`."""
        v = _fmt(value)
        if self.kind == "env":
            return f"{self.name}={v} (environment)"
        if self.kind == "file":
            return f"{self.name}: {v} (in {self.file})"
        if isinstance(value, bool):
            return self.name
        return f"{self.name} {v}" + (" (the default)" if self.kind == "default" else "")

    def example(self, value: Any) -> str:
        """How to write a good value in the same place."""
        v = _fmt(value)
        if self.kind == "env":
            return f"{self.name}={v}"
        if self.kind == "file":
            return f"{self.name}: {v} in {self.file}"
        return f"{self.name} {v}"

    def where(self) -> str:
        """Short name of the option plus its source, for messages without a value."""
        if self.kind == "env":
            return f"{self.name} (environment)"
        if self.kind == "file":
            return f"{self.name} (in {self.file})"
        return self.name + (" (the default)" if self.kind == "default" else "")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def _origins_from_sources(sources: Mapping[str, str] | None) -> Callable[[str], _Origin]:
    """Origins for validate_batch_settings, which only gets the public sources dict."""

    def origin(field: str) -> _Origin:
        opt = OPTIONS_BY_FIELD[field]
        # Without sources the value may have come from anywhere: name the flag, claim nothing.
        src = "cli" if sources is None else sources.get(field, "default")
        if src.startswith("env:"):
            return _Origin("env", src[4:])
        if src.startswith("file:"):
            return _Origin("file", field, Path(src[5:]))
        return _Origin("cli" if src == "cli" else "default", opt.flag)

    return origin


# --------------------------------------------------------------------------- value parsing


def _parse_bool_text(text: str) -> bool | None:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def _parse_text(opt: BatchOption, text: str, origin: _Origin) -> Any:
    """A value from text (environment). Raises ConfigError naming the variable."""
    if not text.strip():
        raise ConfigError(
            f"{origin.where()} is set but empty.",
            f"Give it a value, e.g. {origin.example(_example_value(opt))}, or remove it to use the default.",
        )
    if opt.kind == "path":
        return Path(text).expanduser()
    if opt.kind == "bool":
        value = _parse_bool_text(text)
        if value is None:
            raise ConfigError(
                f"{origin.show(text)} is not a yes/no value.",
                f"Use one of {'/'.join(TRUE_WORDS + FALSE_WORDS)} (any case), e.g. {origin.example('true')}.",
            )
        return value
    if opt.kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(
                f"{origin.show(text)} is not a whole number.", f"Use e.g. {origin.example(_example_value(opt))}."
            ) from None
    if opt.kind == "float":
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(
                f"{origin.show(text)} is not a number of seconds.", f"Use e.g. {origin.example(_example_value(opt))}."
            )
        return value
    return text.strip()


def _parse_yaml_value(opt: BatchOption, value: Any, origin: _Origin) -> Any:
    """A value from YAML, where types are already decided by the YAML parser."""
    if value is None:
        raise ConfigError(
            f"{origin.where()} has no value.",
            f"Give it a value, e.g. {origin.example(_example_value(opt))}, or delete the line to use the default.",
        )
    if opt.kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{origin.show(value)} is not a folder path.",
                f"Write the path as text, quoted if it looks like a number, e.g. {origin.example('/var/lib/wsi-node/' + opt.field)}.",
            )
        return Path(value).expanduser()
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        parsed = _parse_bool_text(value) if isinstance(value, str) else None
        if parsed is None:
            raise ConfigError(
                f"{origin.show(value)} is not a yes/no value.",
                f"Use one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}, e.g. {origin.example('true')}.",
            )
        return parsed
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"{origin.show(value)} is not a whole number.", f"Use e.g. {origin.example(_example_value(opt))}."
            )
        return value
    if opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(
                f"{origin.show(value)} is not a number of seconds.", f"Use e.g. {origin.example(_example_value(opt))}."
            )
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{origin.show(value)} is not one of {', '.join(opt.choices)}.", f"Use e.g. {origin.example(opt.choices[0])}.")
    return value


def _example_value(opt: BatchOption) -> Any:
    if opt.kind == "path":
        return f"/var/lib/wsi-node/{opt.field.replace('_dir', '')}"
    return getattr(_DEFAULTS, opt.field)


# --------------------------------------------------------------------------- command line


def _cli_type(opt: BatchOption) -> Callable[[str], Any]:
    """argparse converters, so a bad number is reported by argparse with the flag and usage."""

    def convert(text: str) -> Any:
        try:
            return _parse_text(opt, text, _Origin("cli", opt.flag))
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = {"int": "whole number", "float": "number"}.get(opt.kind, opt.kind)
    return convert


def build_batch_parser(prog: str = "batch-converter") -> argparse.ArgumentParser:
    """The batch converter's command line.

    Every option defaults to argparse.SUPPRESS, so the namespace holds exactly
    what the user typed: `--quality 85` must beat CONVERTER_QUALITY=60 even
    though 85 is the default. Abbreviations are off: a unit file relying on
    `--watch-int` would break the day another option starting like that is added.
    """
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
        "--config", metavar="FILE", type=Path,
        help=f"YAML file with settings (keys as below, e.g. tile_size) [env {CONFIG_ENV}]",
    )
    groups = {
        "folders": parser.add_argument_group("folders"),
        "conversion": parser.add_argument_group("conversion"),
        "operation": parser.add_argument_group("operation"),
    }
    for opt in BATCH_OPTIONS:
        group = groups[opt.group]
        default = _fmt(getattr(_DEFAULTS, opt.field))
        if opt.kind == "path" and not default.startswith((".", "/")):
            default = "./" + default
        if opt.kind == "bool":
            group.add_argument(*opt.flags, dest=opt.field, action="store_true", help=f"{opt.help} [env {opt.env}]")
            continue
        kwargs: dict[str, Any] = {"dest": opt.field, "help": f"{opt.help} [default: {default}; env {opt.env}]"}
        if opt.kind == "choice":
            kwargs["choices"] = opt.choices
        else:
            kwargs["type"] = _cli_type(opt)
            kwargs["metavar"] = {"path": "DIR", "int": "N", "float": "SECONDS"}[opt.kind]
        group.add_argument(*opt.flags, **kwargs)
    return parser


# --------------------------------------------------------------------------- YAML file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML silently lets the last one win."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_config_file(path: Path, named_by: str) -> dict[str, Any]:
    """The YAML mapping in path; named_by is `--config` or `CONVERTER_CONFIG`, for the message."""
    how = f"named by {named_by}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} ({how}) does not exist.",
            f"Check the path in {named_by}, or copy config/batch_converter.example.yaml there.",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} ({how}) is a folder.", f"Point {named_by} at a YAML file.") from None
    except PermissionError:
        raise ConfigError(
            f"config file {path} ({how}) cannot be read: permission denied.",
            f"Make it readable for user {_user()}, e.g. chmod 0644 {path}.",
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} ({how}) is not UTF-8 text: {exc.reason}.", "Save it as UTF-8 YAML.") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"config file {path} ({how}) is not valid YAML{at}: {problem}.",
            "Fix the YAML syntax there; config/batch_converter.example.yaml shows the expected form.",
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} ({how}) holds a {type(data).__name__}, not a mapping of settings.",
            "Write one `key: value` per line, e.g. `quality: 85`.",
        )
    return data


def _file_layer(path: Path, named_by: str) -> dict[str, tuple[Any, _Origin]]:
    return _entries_layer(_read_config_file(path, named_by), path)


def check_file_entries(data: Mapping[str, Any], path: Path) -> list[ConfigError]:
    """Every problem of the pipeline keys of a config file (unknown keys, wrong types), not only the first."""
    errors: list[ConfigError] = []
    _entries_layer(data, path, errors)
    return errors


def check_env_entries(environ: Mapping[str, str]) -> list[ConfigError]:
    """Every CONVERTER_* variable that does not parse."""
    errors: list[ConfigError] = []
    for opt in BATCH_OPTIONS:
        if opt.env in environ:
            try:
                _parse_text(opt, environ[opt.env], _Origin("env", opt.env))
            except ConfigError as exc:
                errors.append(exc)
    return errors


def _entries_layer(
    data: Mapping[str, Any], path: Path, errors: list[ConfigError] | None = None
) -> dict[str, tuple[Any, _Origin]]:
    out: dict[str, tuple[Any, _Origin]] = {}
    for key, raw in data.items():
        try:
            _entry(out, key, raw, data, path)
        except ConfigError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return out


def _entry(out: dict[str, tuple[Any, _Origin]], key: Any, raw: Any, data: Mapping[str, Any], path: Path) -> None:
    if key == NODE_SECTION:
        node_section(data, path)  # the node's own settings (wsi-node serve); only its shape is checked here
        return
    opt = _YAML_KEYS.get(key) if isinstance(key, str) else None
    if opt is None:
        close = difflib.get_close_matches(str(key), list(_YAML_KEYS), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown key {key!r} in config file {path}.",
            f"{hint}Known keys: {', '.join(o.field for o in BATCH_OPTIONS)}"
            f" (node settings such as ae_title go under `{NODE_SECTION}:`).",
        )
    if opt.field in out:
        raise ConfigError(
            f"config file {path} sets {opt.field} twice, as {out[opt.field][1].name!r} and {key!r}.",
            "Keep one of them.",
        )
    origin = _Origin("file", key, path)
    out[opt.field] = (_parse_yaml_value(opt, raw, origin), origin)


# --------------------------------------------------------------------------- loading


def config_file_from(
    config_arg: Path | None, environ: Mapping[str, str], config_envs: tuple[str, ...] = (CONFIG_ENV,)
) -> tuple[Path, str] | None:
    """The config file to read and what named it: --config, else the first of config_envs that is set."""
    if config_arg is not None:
        return config_arg, "--config"
    for name in config_envs:
        if name in environ:
            text = environ[name]
            if not text.strip():
                raise ConfigError(
                    f"{name} is set but empty.",
                    f"Set it to a YAML file, e.g. {name}=/etc/wsi-node/wsi-node.yaml, or remove it.",
                )
            return Path(text).expanduser(), name
    return None


def read_config_file(path: Path, named_by: str) -> dict[str, Any]:
    """The whole YAML mapping (pipeline keys and the `node:` section), with the loader's messages."""
    return _read_config_file(path, named_by)


def load_batch_settings(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
    config_envs: tuple[str, ...] = (CONFIG_ENV,),
) -> tuple[BatchSettings, dict[str, str]]:
    """Settings from defaults < YAML file < environment < command line, values checked.

    Returns the settings and, per field, where its value came from:
    "default", "file:<path>", "env:<NAME>" or "cli". Raises ConfigError for
    bad values and config files; argparse exits (status 2) for bad command
    lines, as every CLI does. Folders are not checked here: call
    validate_batch_settings(settings, sources=sources) next.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    args = vars(build_batch_parser().parse_args(argv))

    values: dict[str, Any] = {}
    origins: dict[str, _Origin] = {o.field: _Origin("default", o.flag) for o in BATCH_OPTIONS}

    found = config_file_from(args.pop("config", None), environ, config_envs)
    if found is not None:
        config_path, named_by = found
        for field, (value, origin) in _file_layer(config_path, named_by).items():
            values[field], origins[field] = value, origin

    for opt in BATCH_OPTIONS:
        if opt.env in environ:
            origin = _Origin("env", opt.env)
            values[opt.field], origins[opt.field] = _parse_text(opt, environ[opt.env], origin), origin
    _warn_unknown_env(environ)

    for field, value in args.items():
        values[field], origins[field] = value, _Origin("cli", OPTIONS_BY_FIELD[field].flag)

    settings = BatchSettings(**values)
    _check_values(settings, origins.__getitem__)
    return settings, {field: origins[field].source for field in OPTIONS_BY_FIELD}


def _warn_unknown_env(environ: Mapping[str, str]) -> None:
    """A typo in an env file would otherwise silently fall back to the default."""
    known = {o.env for o in BATCH_OPTIONS} | {CONFIG_ENV}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            log.warning(
                "ignoring unknown environment variable %s%s", name, f" (did you mean {close[0]}?)" if close else ""
            )


# --------------------------------------------------------------------------- checks


def _check_values(settings: BatchSettings, origin: Callable[[str], _Origin]) -> None:
    """Types, ranges and choices; no file system access."""
    for opt in BATCH_OPTIONS:
        value = getattr(settings, opt.field)
        o = origin(opt.field)
        ok = {
            "path": isinstance(value, Path),
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "choice": isinstance(value, str),
        }[opt.kind]
        if not ok:
            raise ConfigError(
                f"{o.show(value)} has type {type(value).__name__}, expected {opt.kind}.",
                f"Use e.g. {o.example(_example_value(opt))}.",
            )
        if opt.kind == "choice" and value not in opt.choices:
            raise ConfigError(
                f"{o.show(value)} is not one of {', '.join(opt.choices)}.",
                f"Use e.g. {o.example(getattr(_DEFAULTS, opt.field))}.",
            )

    def check(field: str, good: bool, problem: str, fix_value: Any, fix: str) -> None:
        if not good:
            o = origin(field)
            raise ConfigError(f"{o.show(getattr(settings, field))} {problem}", fix.format(example=o.example(fix_value)))

    check("quality", 1 <= settings.quality <= 100, "is outside 1-100.", 85,
          "Use a JPEG quality between 1 and 100, e.g. {example}.")
    check("tile_size", settings.tile_size > 0 and settings.tile_size % 16 == 0,
          "is not a positive multiple of 16, which tiled TIFF requires.", 256, "Use e.g. {example} (or 512).")
    check("max_concurrent", settings.max_concurrent >= 1, "must be at least 1.", 2, "Use e.g. {example}.")
    check("watch_interval", math.isfinite(settings.watch_interval) and settings.watch_interval > 0,
          "must be a number of seconds above 0.", 10, "Use e.g. {example}.")
    check("settle_seconds", math.isfinite(settings.settle_seconds) and settings.settle_seconds >= 0,
          "must be a number of seconds, 0 or more.", 5, "Use e.g. {example}.")


_OUTPUT_FIELDS = ("serving", "archive", "quarantine", "state_dir")


def validate_batch_settings(
    settings: BatchSettings, *, create_dirs: bool = True, sources: Mapping[str, str] | None = None
) -> list[str]:
    """Check the values and the folders; create missing output folders.

    Raises ConfigError on the first problem. Returns info lines worth
    logging, such as "created folder ./serving". Pass the sources from
    load_batch_settings so messages name CONVERTER_SERVING or the YAML key
    rather than --serving when the value came from there.

    Order matters: nesting is checked before anything is created, so a
    contradictory configuration leaves no folders behind. With
    create_dirs=False (e.g. a dry run) nothing is written; a missing output
    folder is accepted when its nearest existing parent is writable.
    """
    origin = _origins_from_sources(sources)
    _check_values(settings, origin)
    _check_inbox(settings.inbox, origin("inbox"))
    _check_nesting(settings, origin)
    info: list[str] = []
    for field in _OUTPUT_FIELDS:
        _check_output_dir(getattr(settings, field), origin(field), create_dirs, info)
    return info


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):  # pragma: no cover - non-POSIX or nameless uid
        return str(getattr(os, "geteuid", lambda: "?")())


def _check_inbox(path: Path, o: _Origin) -> None:
    if not path.exists():
        raise ConfigError(
            f"inbox folder {o.show(path)} does not exist.",
            f"Create it (mkdir -p {path}) or point {o.name} at the folder where slides are dropped.",
        )
    if not path.is_dir():
        raise ConfigError(f"inbox {o.show(path)} is not a folder.", f"Point {o.name} at a folder.")
    readable = os.access(path, os.R_OK | os.X_OK)
    if readable:
        try:
            with os.scandir(path) as entries:
                next(entries, None)
        except OSError:
            readable = False
    if not readable:
        raise ConfigError(
            f"inbox folder {o.show(path)} cannot be read by user {_user()}.",
            "Give that user read access (e.g. chmod u+rx or a group), or run the converter as its owner.",
        )


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve(strict=False)


def _check_nesting(settings: BatchSettings, origin: Callable[[str], _Origin]) -> None:
    """The converter moves files out of the inbox and writes into the others; nesting would loop or lose files."""
    inbox = _resolved(settings.inbox)
    for field in _OUTPUT_FIELDS:
        other = _resolved(getattr(settings, field))
        oi, oo = origin("inbox"), origin(field)
        if inbox == other or inbox.is_relative_to(other):
            same = "is the same folder as" if inbox == other else "is inside"
            raise ConfigError(
                f"inbox {oi.show(settings.inbox)} {same} {field.replace('_', ' ')} {oo.show(getattr(settings, field))}"
                f" (resolved: {inbox} and {other}).",
                f"Use separate folders side by side, e.g. /var/lib/wsi-node/inbox and /var/lib/wsi-node/{field.replace('_dir', '')};"
                f" change {oi.name} or {oo.name}.",
            )
        if other.is_relative_to(inbox):
            raise ConfigError(
                f"{field.replace('_', ' ')} {oo.show(getattr(settings, field))} is inside inbox {oi.show(settings.inbox)}"
                f" (resolved: {other} in {inbox}); the converter would pick up its own files.",
                f"Move it out of the inbox, e.g. /var/lib/wsi-node/{field.replace('_dir', '')}; change {oo.name}.",
            )


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")  # pragma: no cover - the root always exists


def _probe_write(path: Path) -> OSError | None:
    """Create and remove a file: os.access ignores read-only mounts, ACL quirks and root's bypass."""
    try:
        fd, name = tempfile.mkstemp(prefix=".wsi-node-write-test-", dir=path)
    except OSError as exc:
        return exc
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:  # pragma: no cover - created but not removable: sticky dir of another owner
        return exc
    return None


def _check_output_dir(path: Path, o: _Origin, create: bool, info: list[str]) -> None:
    label = o.show(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} exists but is not a folder.", f"Point {o.name} at a folder, or move that file away.")
    if not path.exists():
        if not create:
            parent = _nearest_existing(path)
            if not parent.is_dir():
                raise ConfigError(
                    f"{label} cannot be created: {parent} is a file, not a folder.",
                    f"Point {o.name} at a path under a folder.",
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"{label} does not exist and user {_user()} cannot create it in {parent}.",
                    f"Create it and make it writable for that user (mkdir -p {path}; chown), or point {o.name} elsewhere.",
                )
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{label} does not exist and cannot be created: {exc.strerror or exc}.",
                f"Create it yourself and make it writable for user {_user()}, or point {o.name} elsewhere.",
            ) from None
        info.append(f"created folder {path}")
    problem: OSError | None = None
    if not os.access(path, os.W_OK | os.X_OK):
        problem = PermissionError(13, "permission denied")
    elif create:
        problem = _probe_write(path)
    if problem is not None:
        raise ConfigError(
            f"{label} is not writable for user {_user()}: {problem.strerror or problem}.",
            f"Make it writable for that user (e.g. chown {_user()} {path}) or point {o.name} elsewhere.",
        )
