"""Config -> Ray Serve deployment options (no Ray started)."""

from __future__ import annotations

from app.builder import deployment_options
from deployments.config import AutoscalingBounds, DeploymentOptions


def test_fixed_replicas_and_actor_resources():
    options = deployment_options(DeploymentOptions(num_replicas=3, num_gpus=1.0, num_cpus=2,
                                                   max_ongoing_requests=4, max_queued_requests=5,
                                                   memory_bytes=1 << 30), "BaseModel", retry_after_s=7)
    backpressure = options.pop("backpressure_config")
    assert (backpressure.status_code, backpressure.retry_after_s) == (503, 7)
    assert options == {"name": "BaseModel", "max_ongoing_requests": 4, "max_queued_requests": 5,
                       "num_replicas": 3,
                       "ray_actor_options": {"num_cpus": 2, "num_gpus": 1.0, "memory": 1 << 30}}


def test_autoscaling_bounds_replace_the_fixed_count():
    options = deployment_options(DeploymentOptions(
        num_replicas=3, autoscaling=AutoscalingBounds(min_replicas=1, max_replicas=5,
                                                      target_ongoing_requests=1.5)), "ControlNet")
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 5,
                                             "target_ongoing_requests": 1.5}


def test_build_app_binds_the_whole_dag(demo_config):
    from app.builder import build_app

    from ray.serve.deployment import Application

    app = build_app(demo_config)
    found = {}
    stack = [app]
    while stack:
        deployment = stack.pop()._bound_deployment
        found[deployment.name] = deployment
        stack += [a for a in deployment.init_args if isinstance(a, Application)]
    assert set(found) == {"Ingress", "BaseModel", "ControlNet", "LoRAStore", "Discriminator"}
    assert found["BaseModel"].ray_actor_options["num_cpus"] == 1
    assert found["Ingress"].max_ongoing_requests == 64
    # every queue is bounded (Ray's default, -1, is not), with the config's Retry-After
    for deployment in found.values():
        config = deployment._deployment_config
        assert config.max_queued_requests == 64
        assert config.backpressure_config.retry_after_s == demo_config.limits.retry_after_s
