"""Summary, records and figures of a live replay, in the conventions of serving benchmarks.

The summary follows vLLM's serving benchmark: completed, failed, request throughput, goodput
(requests within the SLO per second), SLO attainment, latency mean/median/p95/p99 and the
per-stage breakdown the server reports. It also carries the keys ``t2i simulate --json`` prints
(``requests``, ``slo_violation_rate``, ``latency_p50_s`` ...), so a live run and a simulated one
compare key by key. A violation is a latency over the SLO, an error or a timeout; latencies are
quantiles over completed requests only, as vLLM reports them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from trace_replay.replay.driver import LOAD_PARTS, QUEUE_PARTS, STAGES, Record, RunResult


def _q(values: np.ndarray, p: float) -> float:
    return float(np.quantile(values, p)) if values.size else float("nan")


def violating(latency: np.ndarray, completed: np.ndarray, slo_s: float) -> np.ndarray:
    """Which requests violate the SLO: late, or not completed (a NaN latency counts as late)."""
    return ~completed | (np.nan_to_num(latency, nan=np.inf) > slo_s)


def slice_stats(latency: np.ndarray, completed: np.ndarray, load_s: np.ndarray, slo_s: float,
                skip: int = 0) -> dict:
    """Latency and SLO figures from per-request arrays in request order: quantiles over completed
    requests, a violation = late or not completed. One definition for a replay's summary and for
    both sides of ``t2i parity``; the first ``skip`` requests (a warm-up) are left out."""
    lat, done, load = latency[skip:], completed[skip:], load_s[skip:]
    ok = lat[done]
    q = np.quantile(ok, [0.5, 0.95, 0.99]) if ok.size else np.full(3, np.nan)
    bad = violating(lat, done, slo_s)
    return {"requests": int(lat.size), "completed": int(done.sum()),
            "slo_violations": int(bad.sum()),
            "slo_violation_rate": float(bad.mean()) if lat.size else 0.0,
            "latency_mean_s": float(ok.mean()) if ok.size else float("nan"),
            "latency_p50_s": float(q[0]), "latency_p95_s": float(q[1]), "latency_p99_s": float(q[2]),
            "load_seconds": float(np.nansum(load))}


def load_parts(done: list[Record]) -> dict[str, float]:
    """Load seconds of completed requests by part: ``LOAD_PARTS`` as the service reported them,
    and ``models_s``, the rest of load_s (model loads and waits for room)."""
    parts = {p: float(sum(r.timings.get(p, 0.0) for r in done)) for p in LOAD_PARTS}
    parts["models_s"] = float(sum(r.timings.get("load_s", 0.0) for r in done)) - sum(parts.values())
    return parts


def record_arrays(records: list[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latency, completed, load_s) of the requests sent, in request order."""
    sent = [r for r in records if r.outcome != "not_sent"]
    return (np.array([r.latency_s for r in sent]), np.array([r.outcome == "completed" for r in sent], bool),
            np.array([r.timings.get("load_s", 0.0) for r in sent]))


def summarize(run: RunResult, slo_s: float) -> dict:
    recs = run.records
    sent = [r for r in recs if r.outcome != "not_sent"]
    done = [r for r in sent if r.outcome == "completed"]
    failed = [r for r in sent if r.outcome == "failed"]
    timed_out = [r for r in sent if r.outcome == "timeout"]
    lat = np.array([r.latency_s for r in done])
    core = slice_stats(*record_arrays(recs), slo_s)
    good = len(sent) - core["slo_violations"]
    # the run's span: first arrival to the last response (or the run's end when none came)
    ends = [r.done_s for r in sent if np.isfinite(r.done_s)]
    span = max(ends) if ends else run.duration_s
    stages = {}
    for stage in STAGES:
        v = np.array([r.timings.get(stage, 0.0) for r in done])
        stages[stage] = {"mean": float(v.mean()) if v.size else float("nan"),
                         "median": _q(v, 0.5), "p99": _q(v, 0.99), "sum": float(v.sum())}
    lag = np.array([r.sent_s - r.scheduled_s for r in sent if np.isfinite(r.sent_s)])
    client_overhead = np.array([r.latency_s - r.timings.get("total_s", 0.0) for r in done])
    errors: dict[str, int] = {}
    for r in failed + timed_out:
        key = f"{r.outcome} {r.http_status or ''} {r.error[:80]}".strip()
        errors[key] = errors.get(key, 0) + 1
    out = {
        **core,
        "planned": len(recs),
        "sent": len(sent),
        "not_sent": len(recs) - len(sent),
        "failed": len(failed),
        "timed_out": len(timed_out),
        "stop_reason": run.stop_reason,
        "aborted": run.aborted,
        "duration_s": span,
        "slo_s": slo_s,
        "slo_attainment": good / len(sent) if sent else 0.0,
        "request_throughput": len(done) / span if span > 0 else 0.0,
        "goodput": good / span if span > 0 else 0.0,
        "latency_max_s": float(lat.max()) if lat.size else float("nan"),
        "queue_wait_mean_s": stages["queue_s"]["mean"],
        "compute_seconds": stages["inference_s"]["sum"],
        "requests_with_load": int(sum(1 for r in done if r.timings.get("load_s", 0.0) > 0.05)),
        "stages": stages,
        "load_seconds_parts": load_parts(done),
        "client_overhead_median_s": _q(client_overhead, 0.5),
        # how late the driver sent (a concurrency limit's wait included): an open-loop replay is
        # only as good as this is small
        "send_lag_p50_s": _q(lag, 0.5),
        "send_lag_p99_s": _q(lag, 0.99),
        "replicas_seen": len({r.replica for r in done if r.replica}),
        "errors": errors,
    }
    return out


def per_model(run: RunResult, slo_s: float) -> dict[str, dict]:
    """Requests, violations, mean stage times per base model; how many replicas served it and its
    pipeline-loading seconds (``load_parts``' models_s), which show how a router spread it; and
    the medians of queue and inference seconds."""
    out: dict[str, dict] = {}
    for base in sorted({r.base_model for r in run.records}):
        sent = [r for r in run.records if r.base_model == base and r.outcome != "not_sent"]
        done = [r for r in sent if r.outcome == "completed"]
        row = {"requests": len(sent),
               "violations": sum(1 for r in sent if r.outcome != "completed" or r.latency_s > slo_s),
               "replicas": len({r.replica for r in done if r.replica}),
               "models_load_s": load_parts(done)["models_s"]}
        for stage in ("queue_s", "load_s", "preprocess_s", "inference_s"):
            row[stage] = float(np.mean([r.timings.get(stage, 0.0) for r in done])) if done else 0.0
        for stage in ("queue_s", "inference_s"):
            row[f"{stage[:-2]}_p50_s"] = _q(np.array([r.timings.get(stage, 0.0) for r in done]), 0.5)
        row["latency_mean_s"] = float(np.mean([r.latency_s for r in done])) if done else float("nan")
        out[base] = row
    return out


COLUMNS = ("index", "scheduled_s", "sent_s", "done_s", "latency_s", "outcome", "http_status",
           "base_model", "n_loras", "n_controlnets", "steps", "model", "replica", *STAGES, *LOAD_PARTS,
           *QUEUE_PARTS, "error")


def write_records(path: Path, records: list[Record]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in records:
            w.writerow([r.index, f"{r.scheduled_s:.6f}", f"{r.sent_s:.6f}", f"{r.done_s:.6f}",
                        f"{r.latency_s:.6f}", r.outcome, r.http_status, r.base_model, r.n_loras,
                        r.n_controlnets, r.steps, r.model, r.replica,
                        *(f"{r.timings[s]:.6f}" if s in r.timings else ""
                          for s in (*STAGES, *LOAD_PARTS, *QUEUE_PARTS)),
                        r.error])
    return path


def figures(out_dir: Path, run: RunResult, summary: dict, models: dict[str, dict]) -> list[str]:
    """Latency CDF, violations and throughput over time, breakdown per base model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo = summary["slo_s"]
    sent = [r for r in run.records if r.outcome != "not_sent"]
    done = [r for r in sent if r.outcome == "completed"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    lat = np.sort([r.latency_s for r in done])
    if lat.size:
        ax[0].plot(lat, np.arange(1, lat.size + 1) / len(sent), label="completed")
    ax[0].axvline(slo, color="r", ls="--", label=f"SLO {slo:g} s")
    ax[0].set(xlabel="latency (s)", ylabel="fraction of sent requests", ylim=(0, 1.02),
              title=f"latency CDF (attainment {summary['slo_attainment']:.1%})")
    ax[0].legend(loc="lower right")

    span = max(summary["duration_s"], 1e-9)
    width = max(span / 30, 1e-3)
    edges = np.arange(0.0, span + width, width)
    at = np.array([r.scheduled_s for r in sent])
    bad = np.array([r.outcome != "completed" or r.latency_s > slo for r in sent])
    n_sent, _ = np.histogram(at, edges)
    n_bad, _ = np.histogram(at[bad] if at.size else at, edges)
    n_done, _ = np.histogram([r.done_s for r in done], edges)
    mid = (edges[:-1] + edges[1:]) / 2
    ax[1].plot(mid, n_sent / width, label="offered (req/s)")
    ax[1].plot(mid, n_done / width, label="completed (req/s)")
    twin = ax[1].twinx()
    twin.plot(mid, np.where(n_sent > 0, n_bad / np.maximum(n_sent, 1), np.nan), "r.-",
              label="violation rate")
    twin.set(ylabel="violation rate (by arrival)", ylim=(0, 1.05))
    ax[1].set(xlabel="time since start (s)", ylabel="requests/s", title="throughput and violations")
    ax[1].legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)

    names = list(models)
    bottom = np.zeros(len(names))
    for stage in ("queue_s", "load_s", "preprocess_s", "inference_s"):
        vals = np.array([models[m][stage] for m in names])
        ax[2].bar(names, vals, bottom=bottom, label=stage.removesuffix("_s"))
        bottom += vals
    ax[2].set(ylabel="mean seconds per request", title="server time per base model")
    ax[2].tick_params(axis="x", rotation=45)
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "replay.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def table(summary: dict) -> str:
    """The summary as a readable block (vLLM's layout)."""
    s = summary
    lines = [
        "============ Live replay result ============",
        f"{'Requests planned / sent:':36s}{s['planned']} / {s['sent']}",
        f"{'Completed / failed / timed out:':36s}{s['completed']} / {s['failed']} / {s['timed_out']}",
        f"{'Stopped because:':36s}{s['stop_reason']}",
        f"{'Duration (s):':36s}{s['duration_s']:.2f}",
        f"{'Request throughput (req/s):':36s}{s['request_throughput']:.3f}",
        f"{'Goodput (req/s within SLO):':36s}{s['goodput']:.3f}",
        f"{'SLO (s) / attainment:':36s}{s['slo_s']:g} / {s['slo_attainment']:.2%}",
        f"{'SLO violation rate:':36s}{s['slo_violation_rate']:.2%}",
        "--------------- Latency (s) ----------------",
        f"{'Mean / median:':36s}{s['latency_mean_s']:.3f} / {s['latency_p50_s']:.3f}",
        f"{'P95 / P99 / max:':36s}{s['latency_p95_s']:.3f} / {s['latency_p99_s']:.3f} / {s['latency_max_s']:.3f}",
        "------ Server stages (mean / median / p99 s) ------",
    ]
    for stage, v in s["stages"].items():
        lines.append(f"{stage + ':':36s}{v['mean']:.3f} / {v['median']:.3f} / {v['p99']:.3f}")
    lines.append(f"{'Client + HTTP overhead (median s):':36s}{s['client_overhead_median_s']:.3f}")
    lines.append(f"{'Send lag p50 / p99 (s):':36s}{s['send_lag_p50_s']:.3f} / {s['send_lag_p99_s']:.3f}")
    lines.append(f"{'Load seconds (sum of load_s):':36s}{s['load_seconds']:.2f}")
    if s.get("load_seconds_parts"):
        p = s["load_seconds_parts"]
        lines.append(f"{'  models/fetch/swap/unmerge/merge:':36s}{p['models_s']:.2f} / {p['fetch_s']:.2f} / "
                     f"{p['swap_s']:.2f} / {p['unmerge_s']:.2f} / {p['merge_s']:.2f}")
    if s.get("mapping"):
        m = s["mapping"]
        lines.append(f"{'Requests trimmed to limits:':36s}{m['requests_trimmed']} {m['trimmed'] or ''}")
    for err, n in sorted(s["errors"].items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  {n} x {err}")
    lines.append("=" * 44)
    return "\n".join(lines)
