"""Discrete-event simulator of a GPU cluster serving text-to-image pipelines (see README.md).

``simulate(table, policy_set, cfg)`` replays a RequestTable through a named policy set and returns
the per-request records and a summary; ``t2i simulate`` is the command line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from trace_replay.simulator.config import SimConfig
from trace_replay.simulator.engine import Records, Simulation
from trace_replay.simulator.metrics import summarize
from trace_replay.simulator.policy_sets import POLICY_SETS, PolicySetSpec, build_runtime
from trace_replay.simulator.workload import Workload, build_workload
from trace_replay.table import RequestTable


@dataclass
class SimResult:
    workload: Workload
    records: Records
    summary: dict[str, object]
    notes: list[str]


def simulate(table: RequestTable, policy_set: str | PolicySetSpec, cfg: SimConfig | None = None,
             data_dir: Path | None = None, workload: Workload | None = None) -> SimResult:
    """Run ``table`` through ``policy_set``. ``data_dir``: GenTD26 folder for load-time samples
    (None: exponential fallbacks with the talk's means). Pass ``workload`` to reuse one built for
    the same table and config (comparing sets on identical samples)."""
    cfg = cfg or SimConfig()
    notes: list[str] = []
    if workload is None:
        workload, notes = build_workload(table, cfg, data_dir)
    t0 = time.perf_counter()
    sim = Simulation(workload, cfg, build_runtime(policy_set, cfg))
    rec = sim.run()
    wall = time.perf_counter() - t0
    name = policy_set.name if isinstance(policy_set, PolicySetSpec) else policy_set
    summary = summarize(workload, rec, cfg.slo_s, name, cfg.cluster.gpus, cfg.queue_sample_s)
    summary["sim_wall_s"] = wall
    summary["sim_requests_per_s"] = len(workload) / wall if wall > 0 else float("inf")
    return SimResult(workload, rec, summary, notes)


__all__ = ["simulate", "SimConfig", "SimResult", "POLICY_SETS", "PolicySetSpec", "build_workload"]
