"""The smallest app with the t2i request path's shape: HTTP proxy -> FastAPI ingress -> one
DeploymentHandle call -> a deployment that returns a 32x32 image at once. Its latency is what Ray
Serve itself costs per request on this machine, the floor under any composed Serve DAG."""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from ray import serve

floor_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class InstantModel:
    async def generate(self, body: dict) -> np.ndarray:
        return np.zeros((32, 32, 3), np.uint8)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(floor_api)
class FloorIngress:
    def __init__(self, model):
        self.model = model

    @floor_api.post("/v1/images/generations")
    async def generate(self, body: dict) -> dict:
        image = await self.model.generate.remote(body)
        return {"data": [{"shape": list(image.shape)}], "timings": {}}


def deploy_floor(route_prefix: str = "/floor") -> None:
    serve.run(FloorIngress.bind(InstantModel.bind()), name="serve-floor", route_prefix=route_prefix)
