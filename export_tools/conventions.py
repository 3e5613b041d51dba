"""How a network's image tensor maps to RGB uint8 pixels (and back, for the encoder)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from export_tools import ExportError


@dataclass(frozen=True)
class PixelConvention:
    """Pixel mapping of a network image tensor `x [B, 3, h, w] float32`.

    pixel = clip(round((x + mean) * scale), 0, 255), channels flipped to RGB when the network
    works in BGR, then cropped to the bundle's H x W at `crop` when given.
    """

    scale: float = 255.0  # pixels per unit of x: 255 for x in [0, 1], 1 for Caffe's 0-255 range
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to x before scaling, in the network's channel order
    channel_order: str = "RGB"  # "RGB" or "BGR": the network's channel order
    crop: tuple[int, int] | None = None  # (top, left) of the H x W window kept from the h x w output; None = no crop

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ExportError(f"PixelConvention.scale must be > 0, got {self.scale}")
        if len(self.mean) != 3:
            raise ExportError(f"PixelConvention.mean needs 3 values (one per channel), got {self.mean!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ExportError(f"PixelConvention.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 0):
            raise ExportError(f"PixelConvention.crop must be None or (top, left) >= 0, got {self.crop!r}")

    def _mean(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.mean, dtype=like.dtype).view(1, 3, 1, 1)

    def to_pixels(self, x: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """x [B, 3, h, w] float -> image [B, H, W, 3] uint8 RGB (H, W = image_hw)."""
        pixels = torch.clamp(torch.round((x + self._mean(x)) * self.scale), 0.0, 255.0)
        if self.channel_order == "BGR":
            pixels = pixels[:, [2, 1, 0]]
        if self.crop is not None:
            top, left = self.crop
            pixels = pixels[:, :, top : top + image_hw[0], left : left + image_hw[1]]
        return pixels.permute(0, 2, 3, 1).to(torch.uint8)

    def from_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, H, W, 3] uint8 RGB -> x [B, 3, H, W] float32 in this convention (no crop is undone)."""
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        if self.channel_order == "BGR":
            x = x[:, [2, 1, 0]]
        return x / self.scale - self._mean(x)
