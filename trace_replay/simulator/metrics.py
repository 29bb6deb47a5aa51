"""Metrics computed after the run, from the per-request arrays the loop filled (Vidur style).

Latency is arrival to completion. A request violates its SLO when its latency exceeds the SLO
(equal is on time). GPU busy seconds are loading plus computing; idle is the rest of N x makespan,
accumulated by the loop from the gaps between jobs (the conservation test checks the two add up).
Queue length over time counts requests that arrived and have not started, sampled on a grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trace_replay.simulator.engine import Records
from trace_replay.simulator.workload import KIND_NAMES, Workload


def queue_series(arrival: np.ndarray, start: np.ndarray, makespan: float, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid, waiting requests at each grid time): arrived by t minus started by t."""
    grid = np.arange(0.0, makespan + step_s, step_s)
    arrived = np.searchsorted(arrival, grid, side="right")
    started = np.searchsorted(np.sort(start[np.isfinite(start)]), grid, side="right")
    return grid, arrived - started


def summarize(wl: Workload, rec: Records, slo_s: float, policy_set: str, gpus: int,
              queue_step_s: float = 60.0) -> dict[str, object]:
    n = len(wl)
    done = np.isfinite(rec.finish)
    lat = rec.finish - wl.arrival
    latd = lat[done]
    wait = rec.start - wl.arrival
    q = np.quantile(latd, [0.5, 0.95, 0.99]) if latd.size else np.full(3, np.nan)
    busy = float(rec.busy_s.sum())
    idle = float(rec.idle_s.sum())
    _, qs = queue_series(wl.arrival, rec.start, rec.makespan, queue_step_s)
    loads = sum(rec.loads_by_kind.values())
    # replica-seconds routable (what an autoscaler saves); the series steps at each change
    if rec.active_series:
        t = np.array([a for a, _ in rec.active_series] + [rec.makespan])
        k = np.array([b for _, b in rec.active_series], dtype=np.float64)
        active = float(np.sum(np.diff(np.clip(t, 0.0, rec.makespan)) * k))
    else:
        active = gpus * rec.makespan
    out = {
        "policy_set": policy_set,
        "gpus": gpus,
        "requests": n,
        "completed": int(done.sum()),
        "slo_s": slo_s,
        "slo_violations": int(np.count_nonzero(~done | (lat > slo_s))),
        "slo_violation_rate": float(np.count_nonzero(~done | (lat > slo_s)) / n) if n else 0.0,
        "latency_mean_s": float(latd.mean()) if latd.size else float("nan"),
        "latency_p50_s": float(q[0]),
        "latency_p95_s": float(q[1]),
        "latency_p99_s": float(q[2]),
        "queue_wait_mean_s": float(np.nanmean(wait)) if n else float("nan"),
        # every second a GPU spent loading (demand + prefetch + placement); demand alone is charged
        # to requests' latency
        "load_seconds": float(sum(rec.load_by_kind.values())),
        "demand_load_seconds": float(rec.load_s.sum()),
        "load_seconds_by_kind": {KIND_NAMES[k]: round(v, 3) for k, v in rec.load_by_kind.items()},
        "loads": int(loads),
        "loads_by_kind": {KIND_NAMES[k]: int(v) for k, v in rec.loads_by_kind.items()},
        "prefetch_loads": rec.prefetch_loads,
        "prefetch_seconds": rec.prefetch_s,
        "ahead_loads": rec.ahead_loads,
        "ahead_wasted": rec.ahead_wasted,
        "requests_with_miss": int(np.count_nonzero(rec.misses)),
        "compute_seconds": float(wl.infer_s[done].sum()),
        "gpu_busy_seconds": busy,
        "gpu_idle_seconds": idle,
        "gpu_active_seconds": active,
        "makespan_s": rec.makespan,
        "gpu_busy_fraction": busy / (gpus * rec.makespan) if rec.makespan > 0 else 0.0,
        "queue_len_mean": float(qs.mean()) if qs.size else 0.0,
        "queue_len_max": int(qs.max()) if qs.size else 0,
    }
    return out


def write_records(path: str | Path, wl: Workload, rec: Records) -> str:
    """Per-request records as Parquet (pyarrow) or, for a .csv path, CSV."""
    import pyarrow as pa

    table = pa.table({
        "request": np.arange(len(wl)), "arrival_s": wl.arrival, "start_s": rec.start, "finish_s": rec.finish,
        "latency_s": rec.finish - wl.arrival, "load_s": rec.load_s, "infer_s": wl.infer_s,
        "worker": rec.worker, "misses": rec.misses, "base_model": wl.base,
    })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    return str(path)


def figures(out_dir: str | Path, wl: Workload, rec: Records, summary: dict, step_s: float = 60.0) -> list[str]:
    """Latency CDF, queue length over time, routable replicas over time; PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = summary["policy_set"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    lat = np.sort((rec.finish - wl.arrival)[np.isfinite(rec.finish)])
    if lat.size:
        axes[0].plot(lat, np.arange(1, lat.size + 1) / lat.size)
    axes[0].axvline(summary["slo_s"], color="r", ls="--", label=f"SLO {summary['slo_s']} s")
    axes[0].set(xscale="log", xlabel="latency (s)", ylabel="CDF", title=f"{tag}: latency")
    axes[0].legend()
    grid, qs = queue_series(wl.arrival, rec.start, rec.makespan, step_s)
    axes[1].plot(grid / 3600, qs)
    axes[1].set(xlabel="time (h)", ylabel="waiting requests", title="queue length")
    if rec.active_series:
        t, a = zip(*rec.active_series)
        axes[2].step(np.array(t + (rec.makespan,)) / 3600, a + (a[-1],), where="post")
    axes[2].set(xlabel="time (h)", ylabel="routable replicas", title="replicas")
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"simulate_{tag}.{ext}"
        fig.savefig(p)
        paths.append(str(p))
    plt.close(fig)
    return paths
