"""``t2i parity``: one trace slice replayed live and simulated, side by side.

The live run is ``t2i replay`` against the service; the simulated run replays the very same
mapped requests (same arrival times, base models, adapters, steps and images, see
``mapping.to_table``) through the cluster simulator under the policy set the live service runs.
That is the config's ``control.policies``: ``ray-default`` with the live deployment's shape read
from the service's config (as many simulated GPUs as BaseModel replicas, ``max_models_per_replica``
= ``cache.base_models_per_replica``, Ray's ``max_ongoing_requests``, no autoscaling when the
replica count is fixed), or ``coordinator`` on as many GPUs with the replica cache's byte budgets. Service and load times come from a profile
(``t2i profile`` writes one from the running service).

The compared figures come from the per-request latencies of both sides through one function
(``report.slice_stats``, which a replay's summary uses too); ``--warmup-requests N`` leaves the first N out of both, for a service that is not
freshly started (the simulation starts with empty caches; a warm service does not). Relative error
is (sim - live) / live; for a violation rate of 0 live it is undefined (None) and the absolute
difference is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

KEYS = ("latency_mean_s", "latency_p50_s", "latency_p95_s", "latency_p99_s", "slo_violation_rate",
        "load_seconds")


def live_policy_set(config):
    """The simulator's set for the live deployment in ``config``, shaped like it: ``coordinator``
    (cost-aware byte-budgeted caches, least-expected-latency routing, popularity placement and
    bandit prefetch) or ``ray-default`` (count-based LRU, Ray's multiplex routing), as the
    config's ``control.policies`` says, on as many GPUs as BaseModel replicas."""
    from trace_replay.simulator.policy_sets import POLICY_SETS

    dep = config.deployments.base_model
    if config.control.policies == "coordinator":
        update = {"name": "coordinator-live", "tick_s": config.control.replan_period_s,
                  "load_ahead": config.control.load_ahead,
                  "eviction": config.control.eviction,
                  "eviction_args": dict(config.control.eviction_args),
                  "routing_args": {"policy": config.control.routing, **config.control.routing_args},
                  # the live coordinator's core arguments (deployments/coordinator.py reads the same)
                  "placement_args": config.control.coordinator_args()}
        if dep.autoscaling is not None:
            update.update(autoscaling=config.control.autoscaling.policy,
                          autoscaling_args=dict(config.control.autoscaling.policy_args),
                          scale_down=config.control.autoscaling.scale_down,
                          guardrails={"min_replicas": max(dep.autoscaling.min_replicas, 1),
                                      "max_replicas": dep.autoscaling.max_replicas,
                                      "upscale_delay_s": config.control.autoscaling.upscale_delay_s,
                                      "downscale_delay_s": config.control.autoscaling.downscale_delay_s,
                                      "hysteresis": config.control.autoscaling.hysteresis})
        return POLICY_SETS["coordinator"].model_copy(update=update), (
            dep.autoscaling.max_replicas if dep.autoscaling is not None else dep.num_replicas)
    update: dict = {"name": "ray-default-live", "max_models_per_replica": config.cache.base_models_per_replica,
                    "routing_args": {"max_ongoing": dep.max_ongoing_requests}}
    if dep.autoscaling is None:
        update.update(autoscaling="none", tick_s=0.0)
    else:
        update["guardrails"] = {"min_replicas": max(dep.autoscaling.min_replicas, 1),
                                "max_replicas": dep.autoscaling.max_replicas}
        update["autoscaling_args"] = {"target_ongoing_requests": dep.autoscaling.target_ongoing_requests}
    return POLICY_SETS["ray-default"].model_copy(update=update), (
        dep.autoscaling.max_replicas if dep.autoscaling is not None else dep.num_replicas)


def load_profile(path: str | Path, gpus: int, slo_s: float, seed: int, control=None):
    """The profile YAML as a SimConfig for this run (GPUs, SLO and seed from the live side; with
    the live config's ``control`` under the coordinator, its replica-cache budgets as each simulated
    worker's GPU and host memory, and no disk tier, which the live cache does not have)."""
    import yaml

    from trace_replay.simulator.config import SimConfig

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a profile is a YAML mapping (a simulator config), got {type(doc).__name__}")
    doc.setdefault("cluster", {})["gpus"] = gpus
    if control is not None and control.policies == "coordinator" and control.gpu_budget_bytes:
        doc["cluster"].update(gpu_model_gb=control.gpu_budget_bytes / 1e9,
                              host_gb=control.host_budget_bytes / 1e9, disk_gb=0.0)
    doc.update(slo_s=slo_s, seed=seed, time_scale=1.0)
    try:
        return SimConfig.model_validate(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid simulator profile: {exc}") from None


def simulate_slice(requests, registry, config, profile_path: str | Path, slo_s: float, seed: int):
    """Simulate the mapped ``requests`` as the live deployment ``config`` would serve them."""
    from trace_replay.replay.mapping import to_table
    from trace_replay.simulator import simulate

    spec, gpus = live_policy_set(config)
    cfg = load_profile(profile_path, gpus, slo_s, seed, config.control)
    table = to_table(requests, registry)
    # Arrivals are relative to the first request; the table keeps them (time_scale 1).
    result = simulate(table, spec, cfg, data_dir=None)
    return result, cfg, spec


def parallel_service(replicas: int, per_host: int, stretch: Sequence[float]) -> float:
    """How many requests' worth of compute ``replicas`` complete per second of one request's
    uncontended compute when all are busy: a host of h busy replicas runs each job ``stretch[h]``
    times as long (``ClusterSpec.stretch_by_busy``, the simulator's model)."""
    if replicas < 1 or per_host < 1 or len(stretch) <= min(replicas, per_host) or min(stretch) <= 0:
        raise ValueError(f"need replicas >= 1, per_host >= 1 and a stretch > 0 for every busy count up to "
                         f"{min(replicas, per_host)}; got {replicas}, {per_host}, {list(stretch)}")
    full, rest = divmod(replicas, per_host)
    return sum(h / stretch[h] for h in [per_host] * full + ([rest] if rest else []))


def capacity_rps(requests, registry, config, profile_path: str | Path, slo_s: float, seed: int) -> dict:
    """Requests per second the live deployment in ``config`` can complete at most, with this slice's
    mix of requests, from the profile: its parallel service (``parallel_service``: replicas,
    replicas per host and their stretch) over the mean of the requests' expected compute
    (``expected_infer_s``: per base model, steps, adapters; no jitter). Loads are left out: what
    they cost depends on the policies being compared, so a rate set from this loads every arm alike.
    """
    from trace_replay.replay.mapping import to_table
    from trace_replay.simulator.workload import expected_infer_s

    _, gpus = live_policy_set(config)
    cfg = load_profile(profile_path, gpus, slo_s, seed, config.control)
    table = to_table(requests, registry)
    if len(table) == 0:
        raise ValueError("no requests to size a rate for")
    nb = len(table.base_models)
    base = np.where(table.base_model < 0, nb, table.base_model).astype(np.int64)
    mean_s = float(np.mean(expected_infer_s(table, cfg, base)))
    cl = cfg.cluster
    parallel = parallel_service(gpus, cl.replicas_per_host, cl.stretch_by_busy())
    return {"capacity_rps": parallel / mean_s, "mean_compute_s": mean_s, "parallel_service": parallel,
            "replicas": gpus, "replicas_per_host": cl.replicas_per_host, "host_contention": cl.host_contention,
            "host_stretch": cl.host_stretch}


def sim_arrays(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec, wl = result.records, result.workload
    return rec.finish - wl.arrival, np.isfinite(rec.finish), rec.load_s


def compare(live: dict, sim: dict, keys=KEYS) -> dict:
    rel, diff = {}, {}
    for k in keys:
        a, b = float(live.get(k, np.nan)), float(sim.get(k, np.nan))
        diff[k] = b - a
        rel[k] = None if not np.isfinite(a) or a == 0 or not np.isfinite(b) else (b - a) / a
    return {"relative_error": rel, "difference": diff}


def side_by_side(live: dict, sim: dict, cmp: dict) -> str:
    lines = [f"{'':24s}{'live':>12s}{'sim':>12s}{'rel. error':>12s}"]
    for k in KEYS + ("requests", "completed"):
        a, b = live.get(k), sim.get(k)
        r = cmp["relative_error"].get(k)
        fmt = (lambda v: f"{v:12.2%}") if k == "slo_violation_rate" else (lambda v: f"{v:12.3f}")
        cell = lambda v: fmt(v) if isinstance(v, float) else f"{v!s:>12s}"  # noqa: E731
        lines.append(f"{k:24s}{cell(a)}{cell(b)}{'' if r is None else f'{r:+12.1%}'}")
    return "\n".join(lines)
