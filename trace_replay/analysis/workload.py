"""Per-service statistics and ControlNet/LoRA invocation patterns (the Katz/SwiftDiffusion analyses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trace_replay.popularity import gini, lorenz, top_share
from trace_replay.report import new_figure, save
from trace_replay.table import ADAPTER_KINDS, CONTROLNET, LORA, RequestTable


MAX_SERVICES = 8  # GenTD26 has ~4,000 tenants: show the busiest, fold the rest into "all"


def _per_service(table: RequestTable) -> list[tuple[str, RequestTable]]:
    counts = np.bincount(table.service, minlength=len(table.services))
    busiest = np.argsort(-counts, kind="stable")[:MAX_SERVICES]
    parts = [(table.services[i], table.take(table.service == i)) for i in sorted(busiest) if counts[i]]
    if len(table.services) > MAX_SERVICES:
        parts = [(f"{n} (top {MAX_SERVICES} of {len(table.services)})" if j == 0 else n, t)
                 for j, (n, t) in enumerate(parts)]
    return parts + [("all", table)] if len(parts) > 1 else parts


def _bin_s(table: RequestTable) -> float:
    span = float(table.time.max() - table.time.min()) if len(table) else 0.0
    return 3600.0 if span > 6 * 3600 else 60.0


def service_stats(table: RequestTable, out_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    rows = []
    for name, t in _per_service(table):
        n = len(t)
        span = float(t.time.max() - t.time.min()) if n else 0.0
        base = np.bincount(t.base_model[t.base_model >= 0]) if n else np.zeros(0)
        kinds = t.adapter_kind
        hourly = np.bincount(((t.time - t.time.min()) // 3600).astype(np.int64)) if n else np.zeros(1)
        rows.append({
            "service": name, "requests": n, "instances": int(np.unique(t.instance).size),
            "days": round(span / 86400, 2), "mean_rps": n / span if span else 0.0,
            "peak_hour_rps": float(hourly.max() / 3600),
            "base_models": int(np.count_nonzero(base)), "base_gini": gini(base),
            "base_top5%": top_share(base, 0.05), "null_base": int(np.count_nonzero(t.base_model < 0)),
            "with_cn": float(np.mean(t.n_controlnets > 0)) if n else 0.0,
            "with_lora": float(np.mean(t.n_loras > 0)) if n else 0.0,
            "controlnets": int(np.unique(t.adapter_id[kinds == CONTROLNET]).size),
            "loras": int(np.unique(t.adapter_id[kinds == LORA]).size),
        })
    paths: list[str] = []
    if out_dir is not None:
        fig, ax = new_figure(2)
        b = _bin_s(table)
        for name, t in _per_service(table):
            if not len(t):
                continue
            h = np.bincount(((t.time - table.time.min()) // b).astype(np.int64))
            ax[0].plot(np.arange(h.size) * b / 3600, h / b, lw=0.8,
                       label="all services" if name == "all" else f"service {name}")
            base = np.bincount(t.base_model[t.base_model >= 0])
            x, y = lorenz(base)
            ax[1].plot(x, y, label=f"{name} (Gini {gini(base):.3f})")
        ax[0].set(title="Request rate", xlabel="time since trace start (h)", ylabel="requests/s")
        ax[1].plot([0, 1], [0, 1], "k:", lw=0.8, label="equality")
        ax[1].set(title="Base-model popularity (Lorenz)", xlabel="share of base models (least popular first)",
                  ylabel="share of requests")
        for a in ax:
            a.legend(fontsize=8)
        paths = save(fig, out_dir, "service_stats")
    return rows, paths


def invocation(table: RequestTable, kind: int, out_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """Popularity CDF, count per request and share over time of one adapter kind."""
    label = ADAPTER_KINDS[kind]
    shown = {"controlnet": "ControlNet", "lora": "LoRA"}[label]
    count_col = table.n_controlnets if kind == CONTROLNET else table.n_loras
    rows, curves = [], []
    for name, t in _per_service(table):
        sel = t.adapter_kind == kind
        pop = np.sort(np.bincount(t.adapter_id[sel]))[::-1] if sel.any() else np.zeros(0, np.int64)
        pop = pop[pop > 0]
        counts = t.n_controlnets if kind == CONTROLNET else t.n_loras
        hist = np.bincount(counts.astype(np.int64)) if len(t) else np.zeros(1, np.int64)
        rows.append({
            "service": name, "requests": len(t), f"with_{label}": float(np.mean(counts > 0)) if len(t) else 0.0,
            f"distinct_{label}s": int(pop.size), "invocations": int(pop.sum()),
            "mean_per_request": float(counts[counts > 0].mean()) if np.any(counts > 0) else 0.0,
            "max_per_request": int(counts.max()) if len(t) else 0,
            "top1_share": float(pop[0] / pop.sum()) if pop.size else 0.0,
            "top10_share": float(pop[:10].sum() / pop.sum()) if pop.size else 0.0,
            "gini": gini(pop),
        })
        curves.append((name, t, pop, hist, counts))
    paths: list[str] = []
    if out_dir is not None and count_col.size:
        fig, ax = new_figure(3)
        b = _bin_s(table)
        for name, t, pop, hist, counts in curves:
            if pop.size:
                ax[0].plot(np.arange(1, pop.size + 1), np.cumsum(pop) / pop.sum(), label=name)
            ax[1].plot(np.arange(hist.size), hist / max(hist.sum(), 1), marker="o", label=name)
            if len(t):
                slot = ((t.time - table.time.min()) // b).astype(np.int64)
                tot = np.bincount(slot)
                withk = np.bincount(slot, weights=(counts > 0).astype(float), minlength=tot.size)
                share = np.divide(withk, tot, out=np.full(tot.size, np.nan), where=tot > 0)
                ax[2].plot(np.arange(tot.size) * b / 3600, share, lw=0.8, label=name)
        ax[0].set(xscale="log", title=f"{shown} popularity CDF", xlabel=f"{shown}s ranked by invocations",
                  ylabel="cumulative share of invocations")
        ax[1].set(yscale="log", title=f"{shown}s per request", xlabel=f"{shown}s in the request",
                  ylabel="share of requests")
        ax[1].xaxis.get_major_locator().set_params(integer=True)
        ax[2].set(title=f"Requests with a {shown}, per {b / 3600:g} h", xlabel="time since trace start (h)",
                  ylabel="share of requests", ylim=(0, 1))
        for a in ax:
            a.legend(fontsize=8)
        paths = save(fig, out_dir, f"{label}_invocation")
    return rows, paths


def unique_loras(table: RequestTable, out_dir: str | Path | None = None,
                 window_s: float | None = None) -> tuple[list[dict], list[str]]:
    """Distinct LoRAs each instance serves per time window, and cumulatively."""
    t = table.sorted_by_time()
    sel = t.adapter_kind == LORA
    req = t.adapter_request()[sel]
    if req.size == 0:
        return [{"note": "no LoRA ids in this trace"}], []
    span = float(t.time.max() - t.time.min())
    b = window_s or (86400.0 if span > 3 * 86400 else 3600.0 if span > 6 * 3600 else 60.0)
    inst = t.instance[req].astype(np.int64)
    lora = t.adapter_id[sel].astype(np.int64)
    win = ((t.time[req] - t.time.min()) // b).astype(np.int64)
    n_inst, n_win, n_lora = len(t.instances), int(win.max()) + 1, len(t.lora_ids)
    # distinct (instance, window, lora) triples, then counts per (instance, window)
    trip = np.unique((inst * n_win + win) * n_lora + lora)
    per = np.bincount(trip // n_lora, minlength=n_inst * n_win).reshape(n_inst, n_win)
    # cumulative: first window each (instance, lora) pair shows up
    pair = inst * n_lora + lora
    order = np.lexsort((win, pair))
    first = np.ones(order.size, bool)
    first[1:] = pair[order][1:] != pair[order][:-1]
    new = np.bincount(inst[order][first] * n_win + win[order][first], minlength=n_inst * n_win)
    cum = np.cumsum(new.reshape(n_inst, n_win), axis=1)
    active = np.unique(inst)
    rows = []
    for name_i, svc in enumerate(t.services):
        ins = np.unique(t.instance[t.service == name_i])
        ins = ins[np.isin(ins, active)]
        if ins.size == 0:
            continue
        p = per[ins]
        rows.append({"service": svc, "instances": int(ins.size), "window_h": b / 3600,
                     "median_per_window": float(np.median(p)), "p90_per_window": float(np.percentile(p, 90)),
                     "max_per_window": int(p.max()), "median_total": float(np.median(cum[ins, -1])),
                     "max_total": int(cum[ins, -1].max())})
    paths: list[str] = []
    if out_dir is not None:
        fig, ax = new_figure(2)
        x = (np.arange(n_win) + 1) * b / 3600
        for name_i, svc in enumerate(t.services):
            ins = np.unique(t.instance[t.service == name_i])
            ins = ins[np.isin(ins, active)]
            if ins.size == 0:
                continue
            for a, data in ((ax[0], per[ins]), (ax[1], cum[ins])):
                line, = a.plot(x, np.median(data, axis=0), label=f"service {svc} median")
                a.fill_between(x, np.percentile(data, 10, axis=0), np.percentile(data, 90, axis=0),
                               color=line.get_color(), alpha=0.2, label=f"service {svc} p10-p90")
        ax[0].set(title=f"distinct LoRAs per instance per {b / 3600:g} h", xlabel="time (h)",
                  ylabel="distinct LoRAs")
        ax[1].set(title="distinct LoRAs per instance, cumulative", xlabel="time (h)", ylabel="distinct LoRAs")
        for a in ax:
            a.legend(fontsize=8)
        paths = save(fig, out_dir, "unique_loras")
    return rows, paths
