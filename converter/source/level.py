"""A pyramid level of the source series: one size, one or more instances."""

from __future__ import annotations

from dataclasses import dataclass, field

from converter.source.instance import WsiInstance
from converter.source.tile_index import TileIndex, build_tile_index

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass
class Level:
    instances: list[WsiInstance]
    """Concatenation parts in InConcatenationNumber order (usually just one)."""
    tile_index: TileIndex = field(init=False)

    def __post_init__(self) -> None:
        self.tile_index = build_tile_index(self.instances)

    @property
    def first(self) -> WsiInstance:
        return self.instances[0]

    @property
    def width(self) -> int:
        return self.first.image_width

    @property
    def height(self) -> int:
        return self.first.image_height

    @property
    def tile_width(self) -> int:
        return self.first.tile_width

    @property
    def tile_height(self) -> int:
        return self.first.tile_height

    @property
    def transfer_syntax(self) -> str:
        return self.first.transfer_syntax

    @property
    def samples_per_pixel(self) -> int:
        return self.first.samples_per_pixel

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        return self.first.pixel_spacing

    @property
    def is_jpeg_baseline(self) -> bool:
        return all(i.transfer_syntax == JPEG_BASELINE for i in self.instances)

    def describe(self) -> str:
        return f"{self.width}x{self.height} px, {self.tile_width}x{self.tile_height} tiles, {len(self.instances)} instance(s)"
