"""Config -> bound Ray Serve application. The one place deployments get their Serve options.

`build_app` is used by `t2i serve`; `app_builder` is the import path for `serve deploy` /
`serve run` on a cluster (`import_path: app.builder:app_builder`, `args: {config: FILE}`).
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from deployments.config import DeploymentOptions, ServeConfig, load_config
from app.auth import AccessKeys
from app.ingress import T2IIngress
from deployments.base_model import BaseModel
from deployments.controlnet import ControlNet
from deployments.discriminator import Discriminator
from deployments.lora_store import LoRAStore


def deployment_options(options: DeploymentOptions, name: str, retry_after_s: int = 1) -> dict:
    """Serve options of one deployment. Its handle queue is bounded (`max_queued_requests`): a
    call beyond it raises Ray's BackPressureError, which the ingress answers 503 with
    Retry-After, and which Ray's proxy answers the same way (this Retry-After) for the ingress."""
    from ray.serve.config import BackpressureConfig

    kwargs: dict = {"name": name, "max_ongoing_requests": options.max_ongoing_requests,
                    "max_queued_requests": options.max_queued_requests,
                    "backpressure_config": BackpressureConfig(status_code=503,
                                                              retry_after_s=retry_after_s),
                    "ray_actor_options": options.ray_actor_options()}
    if options.autoscaling is not None:
        kwargs["autoscaling_config"] = {
            "min_replicas": options.autoscaling.min_replicas,
            "max_replicas": options.autoscaling.max_replicas,
            "target_ongoing_requests": options.autoscaling.target_ongoing_requests,
        }
    else:
        kwargs["num_replicas"] = options.num_replicas
    return kwargs


def control_options(config: ServeConfig, raw: dict) -> dict:
    """BaseModel's extra Serve options for the coordinator control set: the cache coordinator as
    a deployment-scoped actor (the Serve controller health-checks it and recreates it after a
    crash, and it goes away with the deployment), the cache-aware request router, and the
    custom autoscaling policy when the config gives BaseModel replica bounds. Empty for
    ray-default (serve.multiplexed, Ray's router, Ray's queue-length autoscaler)."""
    if config.control.policies != "coordinator":
        return {}
    import ray
    from ray.serve.config import DeploymentActorConfig

    from deployments.autoscaling import autoscaling_options
    from deployments.coordinator import CacheCoordinator
    from deployments.routing import router_config

    options: dict = {
        "deployment_actors": [DeploymentActorConfig(
            name="coordinator", actor_class=ray.remote(CacheCoordinator), init_args=(raw,),
            actor_options={"num_cpus": 0})],
        "request_router_config": router_config(config),
    }
    options.update(autoscaling_options(config) or {})  # {"autoscaling_config": ...} with bounds
    return options


def build_app(config: ServeConfig) -> Application:
    raw = config.model_dump(mode="json")
    d = config.deployments
    retry = config.limits.retry_after_s
    lora_store = serve.deployment(LoRAStore).options(
        **deployment_options(d.lora_store, "LoRAStore", retry)).bind(raw)
    controlnet = serve.deployment(ControlNet).options(
        **deployment_options(d.controlnet, "ControlNet", retry)).bind(raw)
    base_options = {**deployment_options(d.base_model, "BaseModel", retry), **control_options(config, raw)}
    if "autoscaling_config" in base_options:
        base_options.pop("num_replicas", None)
    base_model = serve.deployment(BaseModel).options(**base_options).bind(raw, lora_store, controlnet)
    discriminator = serve.deployment(Discriminator).options(
        **deployment_options(d.discriminator, "Discriminator", retry)).bind(raw)
    # keys are read here, where the config is (a bad key file fails before anything deploys);
    # the ingress gets only their digests
    access = AccessKeys.load(config.security)
    return serve.deployment(T2IIngress).options(
        **deployment_options(d.ingress, "Ingress", retry)).bind(
        raw, base_model, controlnet, lora_store, discriminator, access)


def app_builder(args: dict) -> Application:
    """Serve application builder: `args` = {"config": path to a t2i config YAML}."""
    if "config" not in args:
        raise ValueError("app_builder needs args.config: the path of a t2i config YAML")
    return build_app(load_config(args["config"]))
