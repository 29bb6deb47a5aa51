"""A small image classifier that scores a generated image in [0, 1] (higher: good enough).

The cascade asks it whether the light model's image can be returned or the heavy model must
regenerate it. Stored as config.json + model.safetensors so it loads like any other checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    input_size: int = 64
    widths: tuple[int, ...] = (8, 16, 32)

    @classmethod
    def from_json(cls, path: Path) -> "DiscriminatorConfig":
        raw = json.loads(path.read_text())
        return cls(input_size=int(raw["input_size"]), widths=tuple(int(w) for w in raw["widths"]))


class ImageDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 3
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) in [0, 1] -> scores (N,) in [0, 1]."""
        images = nn.functional.interpolate(
            images, size=(self.config.input_size, self.config.input_size), mode="bilinear",
            align_corners=False)
        pooled = self.features(images * 2.0 - 1.0).mean(dim=(2, 3))
        return torch.sigmoid(self.head(pooled)).squeeze(-1)

    @torch.no_grad()
    def score(self, images: list[np.ndarray]) -> list[float]:
        """uint8 HxWx3 arrays -> one score per image."""
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
                             for img in images]).float() / 255.0
        return [float(s) for s in self(batch)]

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        config["architecture"] = "ImageDiscriminator"
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> "ImageDiscriminator":
        """Load from a folder; raises ValueError naming the folder and what is wrong."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            model = cls(DiscriminatorConfig.from_json(folder / "config.json"))
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
            raise ValueError(f"discriminator at {str(folder)!r} failed to load: {exc}") from exc
        return model.eval()
