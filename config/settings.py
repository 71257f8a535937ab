"""Typed settings shared by every entry point.

Defaults live here once; the CLI, environment and YAML layers only override
them, so `wsi-node convert`, the batch converter and the node behave alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import ConfigError

MODES = ("auto", "copy", "reencode")
LAYOUTS = ("generic", "svs")
ICC_POLICIES = ("strip", "keep")


@dataclass(frozen=True)
class ConversionOptions:
    mode: str = "auto"
    """copy: JPEG frames byte for byte; reencode: decode and encode; auto: copy where possible."""
    quality: int = 85
    """JPEG quality (1-100) of re-encoded tiles."""
    tile_size: int = 256
    """Tile size of re-encoded pyramids (copied levels keep the source tile size)."""
    layout: str = "generic"
    """generic: pyramidal TIFF; svs: Aperio-compatible, so OpenSlide also shows label and macro."""
    icc: str = "strip"
    """strip: no ICC profile in the TIFF (no colour transform either); keep: embed the source profile."""
    include_label: bool = True
    """The label image often shows patient identity; --no-label drops it."""
    threads: int = 2
    """Decode/encode threads inside one conversion."""
    verify_samples: int = 6
    """Tiles compared with the source per level."""
    max_mad: float = 3.0
    """Largest mean absolute difference per channel allowed for re-encoded tiles."""

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
