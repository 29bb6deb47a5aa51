"""Discriminator deployment: scores images in [0, 1] for the cascade."""

from __future__ import annotations

import asyncio

import numpy as np

from deployments.config import ServeConfig
from deployments.discriminator_model import ImageDiscriminator
from deployments.errors import ModelLoadError


class Discriminator:
    def __init__(self, config: dict | ServeConfig):
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        self._models: dict[str, ImageDiscriminator] = {}
        self._loading = asyncio.Lock()  # one load at a time; a second caller finds it loaded

    async def _model(self, discriminator_id: str) -> ImageDiscriminator:
        if discriminator_id not in self._models:
            async with self._loading:
                if discriminator_id not in self._models:
                    entry = self.config.entry(discriminator_id)
                    try:  # file reads off the replica's loop
                        self._models[discriminator_id] = await asyncio.to_thread(
                            ImageDiscriminator.load, self.config.resolve_source(entry))
                    except ValueError as exc:
                        raise ModelLoadError(discriminator_id, str(exc)) from exc
        return self._models[discriminator_id]

    async def score(self, images: list[np.ndarray], discriminator_id: str | None = None) -> list[float]:
        model = await self._model(discriminator_id or self.config.cascade.discriminator)
        return await asyncio.to_thread(model.score, images)

    async def ready(self) -> dict:
        """A cheap call for the ingress's readiness check."""
        return {"loaded": sorted(self._models)}
