"""The parsers per source: text (environment variables, flag arguments), YAML values, and the value checks.

Each source has exactly one parser for every option, driven by its kind in
config.options, so `CONVERTER_WATCH=yes`, `WSI_NODE_TLS_REQUIRE_CLIENT_CERT=yes`
and `watch: yes` mean the same thing. Every error names the option the way it
was written, through its Origin (config.layers), and says how to fix it.

Also here: reading the YAML file itself (strictly: duplicate keys are an
error, not "the last one wins") and turning its mapping and the environment
into layers for config.layers.resolve. Which file to read is decided by
config_file_from: --config, else the first configured variable that is set.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from config.errors import ConfigError
from config.layers import Origin
from config.options import CONFIG_ENV, NODE_CONFIG_ENV, NODE_OPTIONS, NODE_SECTION, OPTIONS, PIPELINE_OPTIONS, PREFIX, Option

log = logging.getLogger("wsi_node.config")

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
_CONFIG_ENV_OF = {"pipeline": CONFIG_ENV, "node": NODE_CONFIG_ENV}


def current_user() -> str:
    """The user name for messages about permissions."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):  # pragma: no cover - non-POSIX or nameless uid
        return str(getattr(os, "geteuid", lambda: "?")())


# --------------------------------------------------------------------------- values


def _bool_word(text: str) -> bool | None:
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def parse_text(opt: Option, text: str, origin: Origin) -> Any:
    """A value from text (an environment variable, or a flag's argument). Raises ConfigError naming it."""
    if opt.kind == "list":
        return [t.strip() for t in text.split(",") if t.strip()]
    if not text.strip():
        if opt.kind == "file":
            return None
        raise ConfigError(
            f"{origin.where()} is set but empty.",
            f"Give it a value, e.g. {origin.example(opt.example)}, or remove it to use the default.",
        )
    if opt.kind == "folder":
        return Path(text).expanduser()
    if opt.kind == "bool":
        value = _bool_word(text)
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
            raise ConfigError(f"{origin.show(text)} is not a whole number.", f"Use e.g. {origin.example(opt.example)}.") from None
    if opt.kind == "float":
        try:
            number = float(text.strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"{origin.show(text)} is not a number of seconds.", f"Use e.g. {origin.example(opt.example)}.")
        return number
    return text.strip()


def parse_yaml(opt: Option, value: Any, origin: Origin) -> Any:
    """A value from YAML, where types are already decided by the YAML parser."""
    if value is None:
        if opt.kind in ("file", "list"):
            return None if opt.kind == "file" else []
        raise ConfigError(
            f"{origin.where()} has no value.",
            f"Give it a value, e.g. {origin.example(opt.example)}, or delete the line to use the default.",
        )
    if opt.kind == "folder":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{origin.show(value)} is not a folder path.",
                f"Write the path as text, quoted if it looks like a number, e.g. {origin.example(opt.example)}.",
            )
        return Path(value).expanduser()
    if opt.kind in ("file", "text"):
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            what = "a file path" if opt.kind == "file" else "text"
            raise ConfigError(f"{origin.show(value)} is not {what}.", f"Use e.g. {origin.example(opt.example)}.")
        return str(value)
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        parsed = _bool_word(value) if isinstance(value, str) else None
        if parsed is None:
            raise ConfigError(
                f"{origin.show(value)} is not a yes/no value.",
                f"Use one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}, e.g. {origin.example('true')}.",
            )
        return parsed
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin.show(value)} is not a whole number.", f"Use e.g. {origin.example(opt.example)}.")
        return value
    if opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{origin.show(value)} is not a number of seconds.", f"Use e.g. {origin.example(opt.example)}.")
        return float(value)
    if opt.kind == "list":
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in entries):
            raise ConfigError(f"{origin.show(value)} is not a list of text entries.", f"Use e.g. {origin.example(opt.example)}.")
        return [str(v) for v in entries]
    if not isinstance(value, str):
        raise ConfigError(f"{origin.show(value)} is not one of {', '.join(opt.choices)}.", f"Use e.g. {origin.example(opt.choices[0])}.")
    return value


_TYPE_OK: dict[str, Callable[[Any], bool]] = {
    "folder": lambda v: isinstance(v, Path),
    "file": lambda v: v is None or isinstance(v, str),
    "text": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "choice": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list),
}


def check_value(opt: Option, value: Any, origin: Origin) -> None:
    """Type, choices and the option's Check; no file system access. Raises ConfigError naming the origin."""
    if not _TYPE_OK[opt.kind](value):
        raise ConfigError(
            f"{origin.show(value)} has type {type(value).__name__}, expected {opt.kind}.",
            f"Use e.g. {origin.example(opt.example)}.",
        )
    if opt.kind == "choice" and value not in opt.choices:
        raise ConfigError(f"{origin.show(value)} is not one of {', '.join(opt.choices)}.", f"Use e.g. {origin.example(opt.default)}.")
    if opt.check is not None and not opt.check.ok(value):
        raise ConfigError(f"{origin.show(value)} {opt.check.problem}", opt.check.fix.format(example=origin.example(opt.check.good)))


def value_problems(
    options: Sequence[Option], value_of: Callable[[str], Any], origin_of: Callable[[str], Origin]
) -> list[ConfigError]:
    """Every option whose value fails check_value, not only the first."""
    problems: list[ConfigError] = []
    for opt in options:
        try:
            check_value(opt, value_of(opt.field), origin_of(opt.field))
        except ConfigError as exc:
            problems.append(exc)
    return problems


# --------------------------------------------------------------------------- YAML file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML silently lets the last one win."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def config_file_from(config_arg: Path | None, environ: Mapping[str, str], config_envs: Sequence[str]) -> tuple[Path, str] | None:
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
    """The whole YAML mapping in path; named_by is `--config` or the variable, for the message."""
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
            f"Make it readable for user {current_user()}, e.g. chmod 0644 {path}.",
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


# --------------------------------------------------------------------------- layers


_FAILED = object()
"""What _collecting returns for a problem it kept, distinct from every parsed value (None included)."""


def _collecting(errors: list[ConfigError] | None, action: Callable[[], Any]) -> Any:
    """Run action; with an errors list (config check), keep going after a problem instead of raising it."""
    try:
        return action()
    except ConfigError as exc:
        if errors is None:
            raise
        errors.append(exc)
        return _FAILED


def _spellings(options: Sequence[Option]) -> dict[str, Option]:
    return {k: o for o in options for k in o.yaml_spellings}


_PIPELINE_KEYS = _spellings(PIPELINE_OPTIONS)
_NODE_KEYS = _spellings(NODE_OPTIONS)


def _entry(out: dict[str, tuple[Any, Origin]], key: Any, raw: Any, path: Path, node: bool) -> None:
    known = _NODE_KEYS if node else _PIPELINE_KEYS
    opt = known.get(key) if isinstance(key, str) else None
    if opt is None:
        close = difflib.get_close_matches(str(key), list(known), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        if node:
            raise ConfigError(f"unknown key {key!r} under `{NODE_SECTION}:` in config file {path}.",
                              f"{hint}Known node keys: {', '.join(o.key for o in NODE_OPTIONS)}.")
        raise ConfigError(
            f"unknown key {key!r} in config file {path}.",
            f"{hint}Known keys: {', '.join(o.key for o in PIPELINE_OPTIONS)}"
            f" (node settings such as ae_title go under `{NODE_SECTION}:`).",
        )
    origin = Origin.key_in(opt, key, path)
    if opt.field in out:
        first = out[opt.field][1].name
        label = f"{NODE_SECTION}.{opt.key}" if node else opt.key
        raise ConfigError(f"config file {path} sets {label} twice, as {first!r} and {origin.name!r}.", "Keep one of them.")
    out[opt.field] = (parse_yaml(opt, raw, origin), origin)


def node_section(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The `node:` mapping of a config file (empty when absent)."""
    section = data.get(NODE_SECTION)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"`{NODE_SECTION}:` in config file {path} is not a mapping of settings.",
                          "Indent the node settings under it, e.g. `node:\\n  ae_title: WSINODE`.")
    return section


def file_layer(
    data: Mapping[str, Any], path: Path, with_node: bool, errors: list[ConfigError] | None = None
) -> dict[str, tuple[Any, Origin]]:
    """The settings of a config file: pipeline keys at the top level, node keys under `node:`.

    with_node False (the batch converter): only the shape of the `node:`
    section is checked, so one file serves a node and a batch converter.
    With an errors list every problem is collected instead of the first raised.
    """
    out: dict[str, tuple[Any, Origin]] = {}
    for key, raw in data.items():
        if key != NODE_SECTION:
            _collecting(errors, lambda: _entry(out, key, raw, path, node=False))
            continue
        section = _collecting(errors, lambda: node_section(data, path))
        if with_node and section is not _FAILED:
            for node_key, node_raw in section.items():
                _collecting(errors, lambda: _entry(out, node_key, node_raw, path, node=True))
    return out


def env_layer(
    environ: Mapping[str, str], options: Sequence[Option], errors: list[ConfigError] | None = None
) -> dict[str, tuple[Any, Origin]]:
    """The settings the environment sets (CONVERTER_*, WSI_NODE_*), for the options of an entry point."""
    out: dict[str, tuple[Any, Origin]] = {}
    for opt in options:
        if opt.env in environ:
            origin = Origin.env_of(opt)
            value = _collecting(errors, lambda: parse_text(opt, environ[opt.env], origin))
            if value is not _FAILED:
                out[opt.field] = (value, origin)
    return out


def warn_unknown_env(environ: Mapping[str, str], options: Sequence[Option]) -> None:
    """A typo in an env file would otherwise silently fall back to the default."""
    sections = {o.section for o in options}
    for section in sorted(sections):
        prefix = PREFIX[section]
        known = {o.env for o in OPTIONS if o.section == section} | {_CONFIG_ENV_OF[section]}
        for name in environ:
            if name.startswith(prefix) and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                log.warning("ignoring unknown environment variable %s%s", name, f" (did you mean {close[0]}?)" if close else "")
