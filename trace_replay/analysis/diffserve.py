"""DiffServe workload files at a glance: arrival rates, deferral curve f(t), confidences, runtimes, SLOs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trace_replay.formats import diffserve as ds
from trace_replay.report import new_figure, save


def overview(data_dir: str | Path, out_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """One row per arrival trace (rate statistics per 1 s bin), plus the cascade apps' SLOs."""
    root = Path(data_dir)
    traces = sorted((root / "traces" / "maf").rglob("*.txt"))
    if not traces:
        raise FileNotFoundError(f"no DiffServe arrival traces under {root / 'traces' / 'maf'}")
    rows, rates = [], []
    for p in traces:
        t = ds.load_arrivals(p)
        if not len(t):
            continue
        per_s = np.bincount(t.time.astype(np.int64))
        rows.append({"trace": str(p.relative_to(root / "traces" / "maf")), "requests": len(t),
                     "seconds": float(t.time.max()), "mean_qps": float(len(t) / max(t.time.max(), 1e-9)),
                     "p99_qps": float(np.percentile(per_s, 99)), "peak_qps": int(per_s.max()),
                     "prompts": int(np.unique(t.prompt).size), "slo_s": ""})
        rates.append((rows[-1]["trace"], per_s))
    apps = sorted((root / "traces" / "apps").rglob("*.json"))
    for p in apps:
        app = ds.load_app(p)
        rows.append({"trace": f"app {p.name}: {' -> '.join(app.chain)}", "requests": "", "seconds": "",
                     "mean_qps": "", "p99_qps": "", "peak_qps": "", "prompts": "", "slo_s": app.slo_s})
    paths: list[str] = []
    if out_dir is not None:
        fig, ax = new_figure(3)
        for name, per_s in rates:
            if "dynamic" in name:
                ax[0].plot(np.arange(per_s.size), per_s, lw=0.7, label=Path(name).stem)
        ax[0].set(title="DiffServe dynamic traces (1 s bins)", xlabel="time (s)", ylabel="requests/s")
        ax[0].legend(fontsize=6, ncol=2)
        for f in sorted((root / "traces" / "apps").rglob("f_t_*.csv")):
            t_, f_ = ds.load_f_t(f)
            ax[1].plot(t_, f_, marker="o", ms=3, label=f.stem[4:])
        ax[1].set(title="Deferral curve f(t)", xlabel="confidence threshold t",
                  ylabel="fraction deferred to the heavy model", ylim=(0, 1))
        ax[1].legend(fontsize=8)
        for f in sorted((root / "profiling").glob("*.csv")):
            for prof in ds.load_profiles(f):
                if prof.accel == "onnxruntime_gpu_ampere":  # one accelerator keeps the panel readable
                    ax[2].plot(prof.batch, prof.p50_ms, marker="o", ms=3,
                               label=f"{f.stem.rsplit('_', 1)[-1]} profile: {prof.model}")
        ax[2].set(xscale="log", yscale="log", title="Runtime by batch size (p50, Ampere GPU)",
                  xlabel="batch size", ylabel="ms")
        ax[2].legend(fontsize=6)
        paths = save(fig, out_dir, "diffserve_overview")
    return rows, paths
