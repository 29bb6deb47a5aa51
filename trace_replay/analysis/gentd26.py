"""GenTD26 analyses: popularity skew, component load-time distributions, cluster QPS over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trace_replay.formats.gentd26 import COMPONENT_FILES, load_component_latencies, load_metric
from trace_replay.popularity import gini, lorenz, top_k_share, top_share
from trace_replay.report import new_figure, save
from trace_replay.table import LORA, RequestTable


def skew(table: RequestTable, out_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """Gini and top-k shares of base models and LoRAs (GenTD26: Gini 0.876, top 5% -> 78%)."""
    series = {"base_model": np.bincount(table.base_model[table.base_model >= 0])}
    lora = table.adapter_id[table.adapter_kind == LORA]
    if lora.size:
        series["lora"] = np.bincount(lora)
    pairs = table.base_model.astype(np.int64)
    if lora.size:  # pipelines: (base model, first LoRA) pairs, the unit SwiftDiffusion caches
        first = np.full(len(table), -1, dtype=np.int64)
        has = np.diff(table.adapter_offsets) > 0
        first[has] = table.adapter_id[table.adapter_offsets[:-1][has]]
        _, pair_codes = np.unique(pairs * (len(table.lora_ids) + 1) + first + 1, return_inverse=True)
        series["pipeline"] = np.bincount(pair_codes[table.base_model >= 0])
    rows = []
    for name, c in series.items():
        c = c[c > 0]
        rows.append({"component": name, "distinct": int(c.size), "requests": int(c.sum()), "gini": gini(c),
                     "top5%_share": top_share(c, 0.05), "top1_share": top_k_share(c, 1),
                     "top10_share": top_k_share(c, 10), "top50_share": top_k_share(c, 50)})
    paths: list[str] = []
    if out_dir is not None:
        fig, ax = new_figure(2)
        for name, c in series.items():
            c = np.sort(c[c > 0])[::-1]
            ax[0].loglog(np.arange(1, c.size + 1), c, label=name)
            x, y = lorenz(c)
            ax[1].plot(x, y, label=f"{name} (Gini {gini(c):.3f})")
        ax[0].set(title="Popularity by rank", xlabel="rank", ylabel="requests")
        ax[1].plot([0, 1], [0, 1], "k:", lw=0.8, label="equality")
        ax[1].set(title="Lorenz curve", xlabel="share of items (least popular first)", ylabel="share of requests")
        for a in ax:
            a.legend(fontsize=8)
        paths = save(fig, out_dir, "gentd26_skew")
    return rows, paths


def load_times(data_dir: str | Path, out_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    dists = load_component_latencies(data_dir)
    rows = [{"component": k, "samples": int(d.values_s.size), "mean_s": float(d.values_s.mean()),
             "p50_s": float(d.quantile(0.5)), "p90_s": float(d.quantile(0.9)),
             "p99_s": float(d.quantile(0.99)), "max_s": float(d.values_s[-1]),
             "zero_share": float(np.mean(d.values_s <= 0)), "file": COMPONENT_FILES[k]}
            for k, d in dists.items()]
    paths: list[str] = []
    if out_dir is not None:
        fig, ax = new_figure(1, width=6.5)
        for k, d in dists.items():
            v = d.values_s
            zeros = float(np.mean(v <= 0))
            note = f", {zeros:.0%} zero" if zeros else ""  # zero samples would stretch the log axis
            ax[0].plot(v, np.arange(1, v.size + 1) / v.size, label=f"{k} (p50 {np.median(v):.1f} s{note})")
        ax[0].set(xscale="log", xlim=(0.1, None), title="GenTD26 load and inference time distributions",
                  xlabel="seconds", ylabel="CDF")
        ax[0].legend(fontsize=8)
        paths = save(fig, out_dir, "gentd26_load_times")
    return rows, paths


def qps(data_dir: str | Path, out_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """Cluster-total QPS per sampling instant (summed across containers), by request type."""
    m = load_metric(Path(data_dir) / "qps.csv", extra=("request_type",))
    types = sorted(set(m.extra["request_type"].tolist()))
    rows, curves = [], []
    for rt in types:
        sel = m.extra["request_type"] == rt
        ts, inv = np.unique(m.time[sel], return_inverse=True)
        total = np.bincount(inv, weights=m.value[sel])
        rows.append({"request_type": rt, "instants": int(ts.size), "containers": int(np.unique(m.container[sel]).size),
                     "mean_qps": float(total.mean()), "p50_qps": float(np.median(total)),
                     "peak_qps": float(total.max()), "hours": float((ts[-1] - ts[0]) / 3600)})
        curves.append((rt, ts, total))
    paths: list[str] = []
    if out_dir is not None:
        fig, ax = new_figure(1, width=8)
        t0 = m.time.min()
        for rt, ts, total in curves:
            ax[0].plot((ts - t0) / 3600, total, lw=0.8, label=rt)
        ax[0].set(title="GenTD26 cluster QPS (scaled, summed across containers)",
                  xlabel="hours since first sample", ylabel="QPS (scaled)")
        ax[0].legend(fontsize=8)
        paths = save(fig, out_dir, "gentd26_qps")
    return rows, paths
