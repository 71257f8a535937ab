"""Typed settings shared by every entry point.

The defaults are declared once, in the option table (config.options); these
dataclasses take them from there, so `wsi-node convert`, the batch converter,
the node and code that builds BatchSettings() directly agree. The CLI,
environment and YAML layers (config.effective) only override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from config.errors import ConfigError
from config.options import ICC_POLICIES, LAYOUTS, MODES, PIPELINE_OPTIONS, default


@dataclass(frozen=True)
class ConversionOptions:
    mode: str = default("mode")
    """copy: JPEG frames byte for byte; reencode: decode and encode; auto: copy where possible."""
    quality: int = default("quality")
    """JPEG quality (1-100) of re-encoded tiles."""
    tile_size: int = default("tile_size")
    """Tile size of re-encoded pyramids (copied levels keep the source tile size)."""
    layout: str = default("layout")
    """generic: pyramidal TIFF; svs: Aperio-compatible, so OpenSlide also shows label and macro."""
    icc: str = default("icc")
    """strip: no ICC profile in the TIFF (no colour transform either); keep: embed the source profile."""
    include_label: bool = not default("no_label")
    """The label image often shows patient identity; --no-label drops it."""
    threads: int = 2
    """Decode/encode threads inside one conversion."""
    verify_samples: int = 6
    """Tiles compared with the source per level."""
    max_mad: float = 3.0
    """Largest mean absolute difference per channel allowed for re-encoded tiles."""
    yield_to: str = ""
    """A receivers' mark (converter.inbox.receiving): while it is fresh the kernel copy keeps to a low rate. The node sets it."""

    def __post_init__(self) -> None:
        validate_conversion(self)


def validate_conversion(o: ConversionOptions) -> None:
    if o.mode not in MODES:
        raise ConfigError(f"mode {o.mode!r} is not one of {', '.join(MODES)}.", "Use --mode auto, copy or reencode.")
    if not 1 <= int(o.quality) <= 100:
        raise ConfigError(f"quality {o.quality} is outside 1-100.", "Use a JPEG quality between 1 and 100, e.g. --quality 85.")
    if o.tile_size < 16 or o.tile_size % 16:
        raise ConfigError(
            f"tile size {o.tile_size} is not a positive multiple of 16, which TIFF requires.",
            "Use e.g. --tile-size 256 or 512.",
        )
    if o.layout not in LAYOUTS:
        raise ConfigError(f"layout {o.layout!r} is not one of {', '.join(LAYOUTS)}.", "Use --layout generic or svs.")
    if o.icc not in ICC_POLICIES:
        raise ConfigError(f"icc policy {o.icc!r} is not one of {', '.join(ICC_POLICIES)}.", "Use --icc strip or keep.")
    if o.threads < 1:
        raise ConfigError(f"threads {o.threads} must be at least 1.", "Use a positive number.")


@dataclass(frozen=True)
class BatchSettings:
    """Everything the batch converter (`batch-converter`) needs, with its defaults.

    Values are layered defaults < YAML file < environment < command line by
    config.effective.load_batch_settings, which also checks them; the folder
    checks (existence, write access, nesting) live in
    config.folders.validate_batch_settings because they touch the file system
    and may create folders. No __post_init__ validation here, unlike
    ConversionOptions: a good message must name the option as the user wrote
    it (flag, env var or YAML key), and only the layering knows that.
    """

    inbox: Path = default("inbox")
    """Where slides are dropped (files or folders); must exist, the converter only reads it."""
    serving: Path = default("serving")
    """Finished pyramidal TIFFs, the folder a viewer serves from."""
    archive: Path = default("archive")
    """Sources that converted successfully are moved here, so the inbox only holds pending work."""
    quarantine: Path = default("quarantine")
    """Sources that failed go here with their report, so one bad slide is not retried forever."""
    state_dir: Path = default("state_dir")
    """Bookkeeping (what is in progress or done) that must survive a restart."""
    quality: int = default("quality")
    """JPEG quality (1-100) of re-encoded tiles."""
    tile_size: int = default("tile_size")
    """Tile size of re-encoded pyramids, a positive multiple of 16 (a TIFF requirement)."""
    max_concurrent: int = default("max_concurrent")
    """Slides converted in parallel; each conversion also gets cpu_count // max_concurrent threads."""
    watch: bool = default("watch")
    """Keep running and poll the inbox instead of converting what is there once and exiting."""
    watch_interval: float = default("watch_interval")
    """Seconds between inbox scans in watch mode."""
    dry_run: bool = default("dry_run")
    """Report what would be converted and moved, without writing anything."""
    mode: str = default("mode")
    """copy: JPEG frames byte for byte; reencode: decode and encode; auto: copy where possible."""
    layout: str = default("layout")
    """generic: pyramidal TIFF; svs: Aperio-compatible, so OpenSlide also shows label and macro."""
    icc: str = default("icc")
    """strip: no ICC profile in the TIFF; keep: embed the source profile."""
    no_label: bool = default("no_label")
    """Drop the label image, which often shows patient identity."""
    settle_seconds: float = default("settle_seconds")
    """A file counts only after its size and mtime were stable this long, so half-copied drops are left alone."""
    naming: str = default("naming")
    """Output file naming: "series-uid" (<SeriesInstanceUID>.tiff) or "drop-name" (name of the dropped file/top folder under the inbox)."""
    log_format: str = default("log_format")
    """"text" for people reading a terminal, "json" for log collectors."""
    executor: str = default("executor")
    dask_scheduler: str = default("dask_scheduler")
    """"local": one process per conversion on this machine; "dask": tasks on a Dask distributed cluster (docs/scale-out.md).
    The scheduler address is Dask's own setting: DASK_SCHEDULER_ADDRESS or `scheduler-address` in its config."""

    def conversion_options(self, threads: int | None = None) -> ConversionOptions:
        """The engine options for one conversion.

        threads defaults to max(1, cpu_count // max_concurrent) so that
        max_concurrent parallel conversions together use about all cores
        without oversubscribing them.
        """
        if threads is None:
            threads = max(1, (os.cpu_count() or 2) // max(1, self.max_concurrent))
        return ConversionOptions(
            mode=self.mode,
            quality=self.quality,
            tile_size=self.tile_size,
            layout=self.layout,
            icc=self.icc,
            include_label=not self.no_label,
            threads=threads,
        )


if {f.name for f in fields(BatchSettings)} != {o.field for o in PIPELINE_OPTIONS}:  # pragma: no cover - caught by any test run
    raise RuntimeError("config.options.OPTIONS (pipeline) and config.settings.BatchSettings disagree; add the new field to both.")
