"""The GPU-cluster files, checked offline with Ray's own validators (no Ray started, no cloud).

`ray up` runs `prepare_config` (merge the provider's defaults) then `validate_config`
(ray-schema.json plus head/min-worker rules) before it talks to AWS; `serve deploy` parses its
file with `ServeDeploySchema` and the controller imports `import_path` with `import_attr`.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import types
from pathlib import Path

import pytest
import yaml

from deployments.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILE = REPO / "ray_cluster.yaml"
CLUSTER_CONFIG = REPO / "app" / "configs" / "cluster-example.yaml"
SERVE_DEPLOY = REPO / "app" / "configs" / "serve-deploy.yaml"


def ray_up_checks(raw: dict) -> dict:
    """What `ray up` does to the file before any cloud call; raises on an invalid file."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def raw_cluster() -> dict:
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture(scope="module")
def cluster(raw_cluster) -> dict:
    return ray_up_checks(raw_cluster)


def gpu_types(cluster: dict) -> dict:
    return {name: t for name, t in cluster["available_node_types"].items()
            if name != cluster["head_node_type"] and t["resources"].get("GPU", 0) >= 1}


def repo_mount(cluster: dict) -> str:
    """The remote path the repo ('.') is synced to."""
    mounts = [remote for remote, local in cluster["file_mounts"].items() if local in (".", "./")]
    assert len(mounts) == 1, f"exactly one file_mount should sync the repo: {cluster['file_mounts']}"
    return mounts[0]


# -- (a) ray_cluster.yaml -----------------------------------------------------------------------
def test_cluster_file_passes_rays_validation(cluster):
    assert cluster["provider"]["type"] == "aws"
    assert cluster["head_node_type"] in cluster["available_node_types"]
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is the CPU node"
    assert head["max_workers"] == 0


def test_gpu_worker_type_scales_within_bounds(cluster):
    workers = gpu_types(cluster)
    assert workers, "no worker type with resources.GPU >= 1"
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= cluster["max_workers"], name
        assert node_type["max_workers"] >= 1, name
        assert re.match(r"^(g|p)\d", node_type["node_config"]["InstanceType"]), name


def test_setup_installs_cuda_torch_then_the_project(cluster):
    commands = cluster["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if re.search(r"pip install torch==", c))
    project_at = next(i for i, c in enumerate(commands) if re.search(r"pip install .*-e ", c))
    assert torch_at < project_at, "torch (CUDA build) must be installed before the project"
    # The torch pin must be the project's, or pip swaps the CUDA build for another torch.
    pinned = re.search(r"torch==([\w.+]+)", commands[torch_at]).group(1)
    assert f"torch=={pinned}" in (REPO / "constraints.txt").read_text().split()
    assert f'"torch=={pinned}"' in (REPO / "pyproject.toml").read_text()
    install = commands[project_at]
    assert f"cd {repo_mount(cluster)}" in install and "-c constraints.txt" in install
    assert "[aux]" in install, "GPU nodes install the controlnet-aux extra"
    # Every node runs them: prepare_config merges setup_commands into both lists.
    assert cluster["head_setup_commands"][:len(commands)] == commands
    assert cluster["worker_setup_commands"][:len(commands)] == commands


def test_ray_starts_from_the_repo_with_token_auth(cluster):
    mount = repo_mount(cluster)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        # cwd of Ray's workers = cwd of `ray start`: serve-deploy.yaml's relative config path.
        assert f"cd {mount}" in start, key
        assert "RAY_AUTH_MODE=token" in start, key
    assert "--head" in " ".join(cluster["head_start_ray_commands"])
    assert "~/.ray/auth_token" in cluster["file_mounts"], "nodes need the cluster's auth token"


# -- (b) Ray's validator does reject broken files -----------------------------------------------
def _break_max_workers(c):
    c["available_node_types"]["gpu-a10g"]["max_workers"] = "lots"


def _break_head_type(c):
    c["head_node_type"] = "no-such-type"


def _break_min_sum(c):
    c["available_node_types"]["gpu-a10g"]["min_workers"] = c["max_workers"] + 1


def _break_unknown_key(c):
    c["max_wrokers"] = 4


def _break_resources(c):
    del c["available_node_types"]["gpu-a10g"]["resources"]


@pytest.mark.parametrize("breaker", [_break_max_workers, _break_head_type, _break_min_sum,
                                     _break_unknown_key, _break_resources])
def test_rays_validator_rejects_a_broken_copy(raw_cluster, breaker):
    import jsonschema

    broken = copy.deepcopy(raw_cluster)
    breaker(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_checks(broken)


# -- (c) cluster-example.yaml -------------------------------------------------------------------
def test_cluster_example_config_loads():
    config = load_config(CLUSTER_CONFIG)
    assert config.ids("base") and config.ids("controlnet") and config.ids("lora")
    assert config.deployments.base_model.num_gpus > 0, "base models need a GPU on the cluster"
    assert 0 < config.deployments.controlnet.num_gpus < 1, "ControlNets share a GPU"
    assert {config.entry(m).arch for m in config.ids("base")} == {"sd15", "sdxl"}
    for model_id in config.ids("base") + config.ids("controlnet"):
        entry = config.entry(model_id)
        assert entry.hub_id and entry.dtype == "float16", model_id
    for model_id in config.ids("controlnet") + config.ids("lora"):
        bases = config.entry(model_id).base_models
        # SD-Turbo (SD 2.1 text encoder) and SDXL need their own adapters: never "all bases".
        assert bases and config.cascade.light not in bases, model_id
        # One architecture, and the adapter's own `arch` says it (the LoRA store's converter).
        assert {config.entry(b).arch for b in bases} == {config.entry(model_id).arch}, model_id
    for model_id in config.ids("lora") + config.ids("discriminator"):
        assert config.resolve_source(config.entry(model_id)).startswith(config.model_root + "/")


def test_cluster_example_fits_the_cluster(cluster):
    """Serve's replica bounds must fit the GPU nodes ray_cluster.yaml can launch."""
    config = load_config(CLUSTER_CONFIG)
    base, cn = config.deployments.base_model, config.deployments.controlnet
    per_node = {t["resources"]["GPU"] for t in gpu_types(cluster).values()}
    assert per_node == {1}, "this sum assumes one GPU per worker"
    max_gpus = sum(t["max_workers"] for t in gpu_types(cluster).values())
    min_gpus = sum(t["min_workers"] for t in gpu_types(cluster).values())
    # A whole-GPU base replica leaves no room for a ControlNet replica on a 1-GPU node.
    needed_max = base.autoscaling.max_replicas + math.ceil(cn.autoscaling.max_replicas * cn.num_gpus)
    needed_min = base.autoscaling.min_replicas + math.ceil(cn.autoscaling.min_replicas * cn.num_gpus)
    assert needed_max <= max_gpus and needed_min <= min_gpus
    assert config.model_root in " ".join(cluster["setup_commands"]), "model_root is set up"


# -- (d) serve-deploy.yaml ----------------------------------------------------------------------
def test_serve_deploy_file_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_DEPLOY.read_text()))
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("t2i", "/", "app.builder:app_builder")
    assert (schema.http_options.host, schema.http_options.port) == ("0.0.0.0", 8000)
    # Relative to the repo, where ray_cluster.yaml starts Ray.
    assert load_config(REPO / app.args["config"]).app_name == app.name


def test_serve_deploy_import_path_is_an_app_builder():
    from ray._common.utils import import_attr  # what Serve's controller uses

    from ray.serve.schema import ServeDeploySchema

    app = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_DEPLOY.read_text())).applications[0]
    builder = import_attr(app.import_path)
    # Serve calls a plain function with exactly one parameter (the args dict); not called here.
    assert isinstance(builder, types.FunctionType)
    assert len(inspect.signature(builder).parameters) == 1
