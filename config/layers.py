"""Precedence and origins: defaults < YAML file < environment < flags, and where each value came from.

This is the one place that decides which layer wins (resolve) and that
remembers how the winning value was written (Origin), for every entry point.
Origins exist because the people reading a message or `wsi-node config show`
run the node from a unit file, an env file and a YAML file written by someone
else: "CONVERTER_QUALITY=0 (environment) is outside 1-100" tells them where
to look, "quality 0 is outside 1-100" does not.

The public form of an origin is a short source string, as load_batch_settings
and effective_settings return them: "default", "file:<path>", "env:<NAME>",
"cli", and for merged lists (tokens, users) the layers that added entries
joined by "+", lowest first ("file:/etc/wsi-node.yaml+cli").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from config.options import NODE_SECTION, Option

OriginKind = Literal["default", "file", "env", "cli"]
Layer = Mapping[str, tuple[Any, "Origin"]]
"""field -> (value, origin) of one source; only the settings that source sets."""


def fmt(value: Any) -> str:
    """A value the way a user would write it: true/false, 10 rather than 10.0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


@dataclass(frozen=True)
class Origin:
    """Where one value came from, to name it in messages the way the user wrote it."""

    kind: OriginKind
    name: str
    """The flag, environment variable or YAML key as written (node keys as node.<key>)."""
    file: Path | None = None

    @classmethod
    def default_of(cls, opt: Option) -> Origin:
        return cls("default", opt.flag)

    @classmethod
    def flag_of(cls, opt: Option) -> Origin:
        return cls("cli", opt.flag)

    @classmethod
    def env_of(cls, opt: Option) -> Origin:
        return cls("env", opt.env)

    @classmethod
    def key_in(cls, opt: Option, key: str, path: Path) -> Origin:
        return cls("file", f"{NODE_SECTION}.{key}" if opt.section == "node" else key, path)

    @classmethod
    def from_source(cls, opt: Option, source: str | None) -> Origin:
        """The origin of a source string. None: the value may have come from anywhere, so name the flag, claim nothing."""
        if source is None:
            return cls.flag_of(opt)
        if opt.merged:
            source = source.rsplit("+", 1)[-1]
        if source.startswith("env:"):
            return cls("env", source[4:])
        if source.startswith("file:"):
            return cls.key_in(opt, opt.key, Path(source[5:]))
        return cls.flag_of(opt) if source == "cli" else cls.default_of(opt)

    @property
    def source(self) -> str:
        if self.kind == "file":
            return f"file:{self.file}"
        if self.kind == "env":
            return f"env:{self.name}"
        return self.kind

    def show(self, value: Any) -> str:
        """The value as the user wrote it, e.g. `--quality 0` or `CONVERTER_QUALITY=0 (environment)`."""
        v = fmt(value)
        if self.kind == "env":
            return f"{self.name}={v} (environment)"
        if self.kind == "file":
            return f"{self.name}: {v} (in {self.file})"
        if isinstance(value, bool):
            return self.name
        return f"{self.name} {v}" + (" (the default)" if self.kind == "default" else "")

    def example(self, value: Any) -> str:
        """How to write a good value in the same place."""
        v = fmt(value)
        if self.kind == "env":
            return f"{self.name}={v}"
        if self.kind == "file":
            section, dot, key = self.name.rpartition(".")
            return f"{key}: {v} under `{section}:` in {self.file}" if dot else f"{self.name}: {v} in {self.file}"
        return f"{self.name} {v}"

    def where(self) -> str:
        """Short name of the option plus its source, for messages without a value."""
        if self.kind == "env":
            return f"{self.name} (environment)"
        if self.kind == "file":
            return f"{self.name} (in {self.file})"
        return self.name + (" (the default)" if self.kind == "default" else "")


@dataclass(frozen=True)
class Resolved:
    """The winning value of every setting and the origins that made it."""

    values: dict[str, Any]
    origins: dict[str, tuple[Origin, ...]]
    """One origin per setting; merged lists: every layer that added entries, lowest first."""

    def origin(self, field: str) -> Origin:
        """The highest layer that set the value, the one to name in a message."""
        return self.origins[field][-1]

    def sources(self, fields: Sequence[str] | None = None) -> dict[str, str]:
        return {f: "+".join(o.source for o in self.origins[f]) for f in (fields if fields is not None else self.origins)}


def resolve(options: Sequence[Option], layers: Sequence[Layer]) -> Resolved:
    """Apply layers lowest first over the defaults: the last layer that sets a value wins.

    Merged lists (http_token, http_user) are the exception: the entries of
    every layer count together, so a token in the env file and one on the
    command line both work. Their entries are ordered highest layer first, the
    order in which a user listed twice is decided (flags win).
    """
    values: dict[str, Any] = {}
    origins: dict[str, tuple[Origin, ...]] = {}
    for opt in options:
        value: Any = list(opt.default) if isinstance(opt.default, list) else opt.default
        chain: tuple[Origin, ...] = (Origin.default_of(opt),)
        for layer in layers:
            if opt.field not in layer:
                continue
            new, origin = layer[opt.field]
            if not opt.merged:
                value, chain = new, (origin,)
            elif new:
                value = list(new) + value
                chain = (origin,) if chain[0].kind == "default" else chain + (origin,)
        values[opt.field], origins[opt.field] = value, chain
    return Resolved(values, origins)
