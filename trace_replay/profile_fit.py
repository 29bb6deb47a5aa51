"""The pure half of ``t2i profile``: fits, load figures, the SimConfig document, the table.

Samples are duck-typed (``kind``, ``base``, ``steps``, ``pixels``, ``size``, ``adapter``,
``timings``, ``replica``), so unit tests feed synthetic ones.
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np

# The tiny demo reads every model from the page cache; a large remote bandwidth keeps loads at
# their measured reload overhead (size / 1000 GB/s is microseconds for these sizes).
REMOTE_GBPS = 1000.0
# A probe's load_s above the warm baseline by more than this counts as a base-model load.
COLD_MARGIN_S = 0.05
LOAD_KEYS = ("base_model", "lora_warmup", "lora_first", "lora_store", "lora_slot", "lora_swap",
             "controlnet_warmup", "controlnet_first", "controlnet_warm")


def median(values) -> float | None:
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def fit_service(steps: list[int], pixels: list[int], inference_s: list[float],
                ref_pixels: int) -> dict:
    """Least squares of inference_s = fixed_s + s_per_step x steps x pixels / ref_pixels.

    A negative intercept (noise on two close points) refits through the origin; s_per_step is
    kept > 0 (the simulator requires it). residual_cv is the spread of observed / fitted.
    """
    x = np.asarray(steps, float) * np.asarray(pixels, float) / float(ref_pixels)
    y = np.asarray(inference_s, float)
    s_per_step, fixed_s = 0.0, 0.0
    if len(np.unique(x)) >= 2:
        s_per_step, fixed_s = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y,
                                              rcond=None)[0]
    if s_per_step <= 0 or fixed_s < 0:
        s_per_step, fixed_s = float(np.dot(x, y) / max(np.dot(x, x), 1e-12)), 0.0
    s_per_step = max(float(s_per_step), 1e-6)
    predicted = fixed_s + s_per_step * x
    ratio = y / np.maximum(predicted, 1e-9)
    # Jitter is the spread of repeats of one request shape; the residual also holds misfit.
    groups: dict[float, list[float]] = {}
    for xi, yi in zip(x, y):
        groups.setdefault(float(xi), []).append(float(yi))
    repeat_cv = median(np.std(g) / np.mean(g) for g in groups.values() if len(g) >= 2 and np.mean(g) > 0)
    return {"s_per_step": s_per_step, "fixed_s": float(fixed_s), "ref_pixels": int(ref_pixels),
            "residual_cv": float(np.std(ratio)) if len(y) >= 3 else 0.0, "repeat_cv": repeat_cv,
            "samples": int(len(y)), "inference_s_median": median(y)}


def _baselines(samples) -> dict[str, float]:
    """Median load_s of plain warm requests per base: what a request pays with nothing to load."""
    out = {}
    for base in dict.fromkeys(s.base for s in samples):
        out[base] = median(s.timings.get("load_s", 0.0) for s in samples
                           if s.base == base and s.kind == "service") or 0.0
    return out


def load_seconds(samples) -> dict[str, list[float]]:
    """Seconds per load by what was loaded; each is load_s minus the base's warm baseline.

    A probe counts as a base-model load only above the baseline by COLD_MARGIN_S (a base that
    was already loaded is no load). A warm ControlNet request that landed on another replica
    than its first use is a first use there.
    """
    base_ref = _baselines(samples)
    out: dict[str, list[float]] = {k: [] for k in LOAD_KEYS}
    first_replica: dict[str, str | None] = {}
    kinds = {"lora-warmup": "lora_warmup", "lora-first": "lora_first", "lora-store": "lora_store",
             "lora-slot": "lora_slot", "cn-warmup": "controlnet_warmup",
             "cn-first": "controlnet_first", "cn-warm": "controlnet_warm"}
    for s in samples:
        extra = max(s.timings.get("load_s", 0.0) - base_ref.get(s.base, 0.0), 0.0)
        if s.kind in ("probe", "reprobe", "rewarm"):
            if extra > COLD_MARGIN_S:
                out["base_model"].append(extra)
            continue
        if s.kind not in kinds:
            continue
        key = kinds[s.kind]
        if s.kind == "lora-store" and "swap_s" in s.timings:  # the slot swap alone, inside load_s
            out["lora_swap"].append(s.timings["swap_s"])
        if s.kind == "cn-first":
            first_replica[s.adapter] = s.replica
        elif s.kind == "cn-warm" and None not in (s.replica, first_replica.get(s.adapter)) \
                and s.replica != first_replica[s.adapter]:
            key = "controlnet_first"
        out[key].append(extra)
    return out


def ratio_overhead(samples, kinds: tuple[str, ...]) -> float | None:
    """Median extra inference time of requests of these kinds over plain ones of the same base,
    steps and size, as a fraction (the simulator's lora_overhead / controlnet_overhead)."""
    ratios = []
    for s in samples:
        if s.kind not in kinds:
            continue
        plain = median(p.timings.get("inference_s") for p in samples if p.kind == "service"
                       and (p.base, p.steps, p.size) == (s.base, s.steps, s.size))
        if plain:
            ratios.append(s.timings.get("inference_s", 0.0) / plain - 1.0)
    value = median(ratios)
    return None if value is None else max(value, 0.0)


def host_contention(samples) -> dict:
    """Replicas on one host and how much they slow each other down, from the 'concurrent'
    rounds (requests sent at once, each to another replica, each with its plain (alone) median
    of the same base, steps and size).

    ``stretch``: per busy count m >= 2, how many times as long a job takes while m replicas
    compute, itself included. A round's jobs start together but end apart (their models differ),
    so a job spends part of its life beside fewer neighbours than it started with. Under the
    simulator's shared model each job's alone seconds are the sum over those phases of phase
    seconds / stretch[m]; with the ends observed, that is one linear equation per job in the
    unknowns 1 / stretch[m], solved over all rounds by non-negative least squares.
    ``contention``: the inference ratio minus one per other busy replica, median over the
    rounds with the most replicas (the linear coefficient the router prices)."""
    replicas = {s.replica for s in samples if s.replica}
    rounds: dict[int, list] = {}
    plain: dict[tuple, list[float]] = {}  # (base, steps, size) -> inference seconds alone
    for s in samples:
        if s.kind == "concurrent" and s.replica:
            rounds.setdefault(s.group, []).append(s)
        elif s.kind == "service":
            plain.setdefault((s.base, s.steps, s.size), []).append(s.timings.get("inference_s"))
    jobs: list[list[tuple[float, float]]] = []  # per round: (inference seconds, alone seconds)
    per_other: dict[int, list[float]] = {}
    for members in rounds.values():
        if len({s.replica for s in members}) != len(members) or len(members) < 2:
            continue  # two on one replica queue rather than share: not a clean round
        round_jobs = []
        for s in members:
            alone = median(plain.get((s.base, s.steps, s.size), []))
            if alone:
                inference = s.timings.get("inference_s", 0.0)
                round_jobs.append((inference, alone))
                per_other.setdefault(len(members), []).append((inference / alone - 1.0) / (len(members) - 1))
        if len(round_jobs) == len(members):
            jobs.append(round_jobs)
    top = max(per_other, default=0)
    value = median(per_other.get(top, []))
    return {"replicas": len(replicas), "contention": None if value is None else max(value, 0.0),
            "n": len(per_other.get(top, [])), "stretch": stretch_by_busy(jobs)}


def stretch_by_busy(rounds: list[list[tuple[float, float]]]) -> dict[int, float]:
    """{m: stretch at m busy} from rounds of jobs started together, each (seconds it ran, seconds
    it takes alone): see ``host_contention``. Busy counts no job spent time at are left out."""
    from scipy.optimize import nnls

    top = max((len(r) for r in rounds), default=0)
    if top < 2:
        return {}
    rows, rhs = [], []
    for jobs in rounds:
        ends = sorted(ran for ran, _ in jobs)
        for ran, alone in jobs:
            at = np.zeros(top + 1)  # seconds this job ran while m jobs of its round ran
            start = 0.0
            for p, end in enumerate(ends):
                if start >= ran:
                    break
                at[len(ends) - p] += min(end, ran) - start
                start = end
            rows.append(at[2:])
            rhs.append(alone - at[1])  # alone seconds left for the shared phases
    a = np.array(rows)
    x, _ = nnls(a, np.array(rhs))
    seen = a.sum(axis=0) > 0
    return {m + 2: float(1.0 / x[m]) for m in range(top - 1) if seen[m] and x[m] > 0}


def build_sim_profile(summary: dict) -> dict:
    """The SimConfig document: inference per model, reload overheads by kind, one load tier."""
    overhead = summary["overhead"]["total_s"] or 0.0
    models = summary["models"]
    per_model = {b: {"s_per_step": round(m["s_per_step"], 9),
                     "fixed_s": round(m["fixed_s"] + overhead, 6), "ref_pixels": m["ref_pixels"]}
                 for b, m in models.items()}
    # repeats of one request shape when there are any (--repeats >= 2), else the fit's residual
    jitter = median(m["repeat_cv"] for m in models.values())
    if jitter is None:
        jitter = median(m["residual_cv"] for m in models.values()) or 0.0
    inference: dict = {
        "fixed_s": round(overhead + (median(m["fixed_s"] for m in models.values()) or 0.0), 6),
        "per_model": per_model,
        "jitter_cv": round(min(jitter, 2.0), 4)}
    for key in ("default_pixels", "default_steps"):
        if summary.get("defaults", {}).get(key):
            inference[key] = summary["defaults"][key]
    for kind, field in (("lora", "lora_overhead"), ("controlnet", "controlnet_overhead")):
        if summary["inference_factors"].get(kind) is not None:
            inference[field] = round(summary["inference_factors"][kind], 4)
    loads = {k: median(v) for k, v in summary["loads"].items()}
    measured = {"base_model": loads["base_model"], "lora": loads["lora_first"],
                "controlnet": loads["controlnet_first"], "lora_swap": loads["lora_swap"]}
    components: dict = {"reload_overhead_s": {k: round(v, 6) for k, v in measured.items()
                                              if v is not None}}
    if summary.get("sizes_gb"):
        components["sizes_gb"] = {k: round(v, 9) for k, v in summary["sizes_gb"].items()}
    for kind, field in (("base_model", "base_load_s"), ("lora", "lora_load_s"),
                        ("controlnet", "controlnet_load_s")):
        if measured[kind] is not None:
            components[field] = round(max(measured[kind], 1e-4), 6)
    cluster = {"load_model": "bandwidth", "remote_gbps": REMOTE_GBPS, "host_gb": 0.0, "disk_gb": 0.0}
    host = summary.get("host") or {}
    if host.get("contention") is not None and host.get("replicas", 0) >= 2:
        # every replica of the profiled service shares this one host
        cluster.update(replicas_per_host=host["replicas"], host_contention=round(host["contention"], 4))
        stretch = host.get("stretch") or {}
        if all(m in stretch for m in range(2, host["replicas"] + 1)):  # measured at every busy count
            # a job is never faster beside more busy neighbours: a lower fit past a higher one is
            # noise (a few rounds a size)
            measured = accumulate((stretch[m] for m in range(2, host["replicas"] + 1)), max)
            cluster["host_stretch"] = [round(x, 4) for x in measured]
    return {"inference": inference, "components": components, "cluster": cluster}


def _fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.4f} {unit}".strip()


def _load_line(result: dict, key: str) -> str:
    values = result["loads"][key]
    return f"{_fmt(median(values))} (n={len(values)})"


def render_table(result: dict) -> str:
    ov = result["overhead"]
    lines = [f"t2i profile of {result['url']}: {result['requests']} requests in "
             f"{result['seconds']} s ({result['measured_at']})",
             f"{'base model':24s}{'s_per_step':>12s}{'fixed_s':>10s}{'ref_pixels':>11s}"
             f"{'resid_cv':>10s}{'n':>4s}"]
    for base, m in result["models"].items():
        lines.append(f"{base:24s}{m['s_per_step']:12.5f}{m['fixed_s']:10.4f}{m['ref_pixels']:11d}"
                     f"{m['residual_cv']:10.3f}{m['samples']:4d}")
    lines.append(f"overhead per request (median of {ov['n']}): client - server total "
                 f"{_fmt(ov['http_s'])}, server total - stages {_fmt(ov['server_s'])}, "
                 f"sum {_fmt(ov['total_s'])}")
    lines.append(f"base-model load      {_load_line(result, 'base_model')}")
    lines.append(f"LoRA first use       {_load_line(result, 'lora_first')};  in the store, "
                 f"swapped into another base {_load_line(result, 'lora_store')} (of which the "
                 f"slot swap {_load_line(result, 'lora_swap')});  in a slot {_load_line(result, 'lora_slot')}")
    lines.append(f"ControlNet first use {_load_line(result, 'controlnet_first')};  warm "
                 f"{_load_line(result, 'controlnet_warm')}")
    lines.append(f"first adapter of a fresh service (one-time imports, left out): LoRA "
                 f"{_load_line(result, 'lora_warmup')}, ControlNet "
                 f"{_load_line(result, 'controlnet_warmup')}")
    factors = result["inference_factors"]
    pct = lambda v: "-" if v is None else f"+{v:.0%}"  # noqa: E731
    lines.append(f"inference with 1 LoRA {pct(factors['lora'])}, with 1 ControlNet "
                 f"{pct(factors['controlnet'])} (over plain, same steps and size)")
    host = result.get("host") or {}
    if host.get("contention") is not None:
        lines.append(f"{host['replicas']} replicas on this host: each busy neighbour adds "
                     f"{host['contention']:+.0%} to a request's inference (n={host['n']})")
    if host.get("stretch"):
        lines.append("inference with m replicas of the host busy, over alone: " + ", ".join(
            f"m={m} x{x:.2f}" for m, x in host["stretch"].items()))
    if result["failed"]:
        lines.append("failed (left out): " + "; ".join(
            f"{k}: {v[:80]}" for k, v in result["failed"].items()))
    return "\n".join(lines)


def yaml_text(result: dict, raw_name: str) -> str:
    import yaml

    ov = result["overhead"]["total_s"] or 0.0
    missing = [k for k in ("base_model", "lora", "controlnet")
               if k not in result["sim_profile"]["components"]["reload_overhead_s"]]
    header = [
        "Simulator profile (trace_replay.simulator.config.SimConfig) written by `t2i profile`.",
        f"Service {result['url']}, measured {result['measured_at']} from host "
        f"{result['client_host']}: {result['requests']} requests in {result['seconds']} s, "
        f"repeats {result['repeats']}.",
        f"Raw samples and medians: {raw_name}.",
        "Service time: inference_s = fixed_s + s_per_step x steps x pixels / ref_pixels, fitted "
        "per base model on warm requests;",
        f"per_model.fixed_s adds the per-request overhead outside the replica ({ov:.4f} s: HTTP, "
        "Serve hops, PNG), the simulator's one constant per model.",
        "Loads: load_s minus a plain warm request's; the models are read from local disk (page "
        "cache), so one tier",
        "(host_gb, disk_gb 0): a load costs its reload overhead (+ size / remote_gbps, "
        "negligible).",
        "Medians (s): " + ", ".join(f"{k} {_fmt(median(v))} (n={len(v)})"
                                   for k, v in result["loads"].items()) + ".",
    ]
    if missing:
        header.append(f"Not measured (simulator defaults kept): reload_overhead_s {missing} "
                      "(already loaded when profiled?).")
    if not result.get("sizes_gb"):
        header.append("components.sizes_gb omitted: run with --config on the models' machine.")
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(
        result["sim_profile"], sort_keys=False, width=100)
