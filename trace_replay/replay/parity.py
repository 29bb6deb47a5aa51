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
    from policies.load_ahead import ahead_from
    from trace_replay.simulator.policy_sets import POLICY_SETS

    dep = config.deployments.base_model
    if config.control.policies == "coordinator":
        update = {"name": "coordinator-live", "tick_s": config.control.replan_period_s,
                  "load_ahead": config.control.load_ahead,
                  # the live replica's setting resolved for its device (a CPU demo reads ahead from
                  # files; the simulator's own default is a GPU's: not from the local disk)
                  "load_ahead_from": ahead_from(config.control.load_ahead_from, dep.num_gpus > 0),
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
    worker's GPU and host memory, no disk tier, which the live cache does not have, and its compute
    slots per host)."""
    import yaml

    from trace_replay.simulator.config import SimConfig

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a profile is a YAML mapping (a simulator config), got {type(doc).__name__}")
    doc.setdefault("cluster", {})["gpus"] = gpus
    if control is not None and control.policies == "coordinator" and control.gpu_budget_bytes:
        doc["cluster"].update(gpu_model_gb=control.gpu_budget_bytes / 1e9,
                              host_gb=control.host_budget_bytes / 1e9, disk_gb=0.0)
    if control is not None and control.policies == "coordinator":
        doc["cluster"]["compute_slots"] = control.compute_slots
    doc.update(slo_s=slo_s, seed=seed, time_scale=1.0)
    try:
        return SimConfig.model_validate(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid simulator profile: {exc}") from None


def live_service(inference_s, sent_s, done_s, queue_s, load_s, completed) -> tuple[np.ndarray, np.ndarray]:
    """Each request's (compute, outside) seconds on the live service, NaN where it did not complete.
    Compute: its ``inference_s``, the time it held the replica (the engine's run under the replica's
    lock), host contention and the machine's slow spells included. Outside: response minus send,
    minus the replica's queue wait, load and that compute: hops, ControlNet preprocessing, HTTP,
    which add to its latency but hold no replica. A simulation given both
    (``simulate_slice(service_s=compute)``, ``sim_arrays(result, outside)``) keeps only the
    control plane's part of the parity error: queueing, placement, loads."""
    f = lambda v: np.asarray(v, np.float64)  # noqa: E731
    ok = np.asarray(completed, bool) & np.isfinite(f(inference_s))
    compute = np.where(ok, np.maximum(f(inference_s), 0.0), np.nan)
    outside = f(done_s) - f(sent_s) - np.nan_to_num(f(queue_s)) - np.nan_to_num(f(load_s)) - compute
    return compute, np.where(ok & np.isfinite(outside), np.maximum(outside, 0.0), np.nan)


def seconds_by_request(live, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A replay's (compute, outside) seconds (``compare.read_records``, which keeps the sent requests)
    placed at each request's index in a slice of ``n`` requests, NaN for the others."""
    if live.index.size and live.index.max() >= n:
        raise ValueError(f"these records go to request {live.index.max()}; the slice has {n}")
    compute, outside = np.full(n, np.nan), np.full(n, np.nan)
    compute[live.index], outside[live.index] = live.compute_s, live.outside_s
    return compute, outside


def given_service(cfg):
    """``cfg`` replaying measured service seconds: each request takes the table's ``exec_s`` (the
    profile's formula where NaN), decisions still expect the profile's formula (as the live router
    does), and the host stretches nothing (the measured seconds already hold the contention)."""
    inference = cfg.inference.model_copy(update={"use_trace_exec": True, "exec_expected": "profile"})
    cluster = cfg.cluster.model_copy(update={"host_contention": 0.0, "host_stretch": []})
    return cfg.model_copy(update={"inference": inference, "cluster": cluster})


def simulate_slice(requests, registry, config, profile_path: str | Path, slo_s: float, seed: int,
                   service_s: np.ndarray | None = None):
    """Simulate the mapped ``requests`` as the live deployment ``config`` would serve them; with
    ``service_s`` (one per request, ``live_service``'s compute), each request's measured compute
    seconds instead of the profile's (``given_service``)."""
    import dataclasses

    from trace_replay.replay.mapping import to_table
    from trace_replay.simulator import simulate

    spec, gpus = live_policy_set(config)
    cfg = load_profile(profile_path, gpus, slo_s, seed, config.control)
    table = to_table(requests, registry)
    if service_s is not None:
        if len(service_s) != len(table):
            raise ValueError(f"service_s: {len(service_s)} values for {len(table)} requests")
        table = dataclasses.replace(table, exec_s=np.asarray(service_s, np.float32))
        cfg = given_service(cfg)
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


def sim_arrays(result, outside_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latency, completed, load_s) of a simulated slice; ``outside_s``: seconds to add to each
    request's latency that held no replica (``live_service``'s outside, 0 where NaN)."""
    rec, wl = result.records, result.workload
    latency = rec.finish - wl.arrival
    if outside_s is not None:
        latency = latency + np.nan_to_num(np.asarray(outside_s, np.float64))
    return latency, np.isfinite(rec.finish), rec.load_s


def compare(live: dict, sim: dict, keys=KEYS) -> dict:
    rel, diff = {}, {}
    for k in keys:
        a, b = float(live.get(k, np.nan)), float(sim.get(k, np.nan))
        diff[k] = b - a
        rel[k] = None if not np.isfinite(a) or a == 0 or not np.isfinite(b) else (b - a) / a
    return {"relative_error": rel, "difference": diff}


def side_by_side(live: dict, sims: list[tuple[str, dict, dict]]) -> str:
    """Live beside each (label, sim figures, ``compare(live, sim)``), with its relative error."""
    width = max(12, *(len(label) + 2 for label, _, _ in sims))
    lines = [f"{'':24s}{'live':>12s}" + "".join(f"{label:>{width}s}{'rel. error':>12s}" for label, _, _ in sims)]
    for k in KEYS + ("requests", "completed"):
        fmt = (lambda v, w: f"{v:{w}.2%}") if k == "slo_violation_rate" else (lambda v, w: f"{v:{w}.3f}")
        cell = lambda v, w: fmt(v, w) if isinstance(v, float) else f"{v!s:>{w}s}"  # noqa: E731
        row = f"{k:24s}{cell(live.get(k), 12)}"
        for _, sim, cmp in sims:
            r = cmp["relative_error"].get(k)
            row += cell(sim.get(k), width) + (" " * 12 if r is None else f"{r:+12.1%}")
        lines.append(row)
    return "\n".join(lines)
