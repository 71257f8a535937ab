"""Folder checks of the pipeline settings: the inbox is readable, the outputs writable, nothing nested.

Separate from loading (config.effective) on purpose: these checks touch the
file system and create the missing output folders, which a dry run, a
`--help` or `wsi-node config check` must not do (create_dirs=False).
Messages name each folder the way the user set it, through the sources
returned by load_batch_settings (`CONVERTER_SERVING=... (environment)`,
`serving: ... (in /etc/...yaml)`), and fall back to the flag.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from config.errors import ConfigError
from config.layers import Origin
from config.options import BY_FIELD, PIPELINE_OPTIONS
from config.settings import BatchSettings
from config.sources import check_value, current_user

OUTPUT_FIELDS = ("serving", "archive", "quarantine", "state_dir")


def origins_from_sources(sources: Mapping[str, str] | None) -> Callable[[str], Origin]:
    """The origin of each pipeline field from the public sources dict (None: name the flags)."""

    def origin(field: str) -> Origin:
        source = None if sources is None else sources.get(field, "default")
        return Origin.from_source(BY_FIELD[field], source)

    return origin


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
    origin = origins_from_sources(sources)
    for opt in PIPELINE_OPTIONS:
        check_value(opt, getattr(settings, opt.field), origin(opt.field))
    check_inbox(settings.inbox, origin("inbox"))
    check_nesting(settings, origin)
    info: list[str] = []
    for field in OUTPUT_FIELDS:
        check_output_dir(getattr(settings, field), origin(field), create_dirs, info)
    return info


def check_inbox(path: Path, o: Origin) -> None:
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
            f"inbox folder {o.show(path)} cannot be read by user {current_user()}.",
            "Give that user read access (e.g. chmod u+rx or a group), or run the converter as its owner.",
        )


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve(strict=False)


def check_nesting(settings: BatchSettings, origin: Callable[[str], Origin]) -> None:
    """The converter moves files out of the inbox and writes into the others; nesting would loop or lose files."""
    inbox = _resolved(settings.inbox)
    for field in OUTPUT_FIELDS:
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


def check_output_dir(path: Path, o: Origin, create: bool, info: list[str]) -> None:
    """An output folder exists and is writable, or (create) is created, or (not create) could be."""
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
                    f"{label} does not exist and user {current_user()} cannot create it in {parent}.",
                    f"Create it and make it writable for that user (mkdir -p {path}; chown), or point {o.name} elsewhere.",
                )
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{label} does not exist and cannot be created: {exc.strerror or exc}.",
                f"Create it yourself and make it writable for user {current_user()}, or point {o.name} elsewhere.",
            ) from None
        info.append(f"created folder {path}")
    problem: OSError | None = None
    if not os.access(path, os.W_OK | os.X_OK):
        problem = PermissionError(13, "permission denied")
    elif create:
        problem = _probe_write(path)
    if problem is not None:
        raise ConfigError(
            f"{label} is not writable for user {current_user()}: {problem.strerror or problem}.",
            f"Make it writable for that user (e.g. chown {current_user()} {path}) or point {o.name} elsewhere.",
        )
