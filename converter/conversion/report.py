"""What a conversion did, for the sidecar JSON, the logs and the exit code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LevelReport:
    index: int
    width: int
    height: int
    action: str
    reason: str
    source_level: int | None
    tiles: int = 0
    bytes: int = 0
    colorspace: str = ""
    subsampling: tuple[int, int] = (1, 1)
    quality: int | None = None
    """JPEG quality of re-encoded tiles (the highest used, when some tiles needed more)."""
    tiles_quality_raised: int = 0
    """Tiles encoded above --quality because they differed from the source by more than the limit."""
    colour: dict[str, str] = field(default_factory=dict)
    """How the source frames' colour space was decided: label, bitstream, decided, why (converter.codecs.colour)."""


@dataclass
class LevelCheck:
    level: int
    action: str
    tiles_checked: int
    identical: bool | None
    """For copied levels: bytes and pixels identical to the source."""
    max_mad: float
    """Largest per-channel mean absolute difference over the checked tiles (tissue pixels)."""
    passed: bool
    detail: str = ""


@dataclass
class ConversionReport:
    series_uid: str
    study_uid: str
    output: str | None = None
    status: str = "failed"
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    levels: list[LevelReport] = field(default_factory=list)
    associated: list[str] = field(default_factory=list)
    checks: list[LevelCheck] = field(default_factory=list)
    colour_checks: list[Any] = field(default_factory=list)
    """converter.tiff.plausibility.ColourCheck per level: the output's background is near-neutral."""
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "published"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)
