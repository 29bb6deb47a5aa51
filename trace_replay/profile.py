"""``t2i profile``: measure the running service over HTTP into a simulator profile (a SimConfig YAML).

Per base model (``GET /v1/models``, kind ``base``) it sends warm requests at two step counts and
two sizes with a fixed seed and fits ``inference_s = fixed_s + s_per_step x steps x pixels /
ref_pixels`` on the response's ``timings``. Besides: the per-request overhead outside the replica
(client latency minus the server's inference, load, queue and preprocessing time), base-model
loads (the first request for a base that is not loaded yet, and a second round-robin pass when
there are more bases than one replica may hold), LoRA loads (first use, vs already in the store,
vs already in a slot) and ControlNet loads (first use vs warm), and the inference cost of one LoRA
and one ControlNet. A load is the request's ``timings.load_s`` minus that of a plain warm request.
The first LoRA and ControlNet a fresh service sees pay one-time imports: when there are more
adapters than ``--adapters``, one of each is a warm-up, reported apart.

Figures depend on what the service has loaded already: run it on a fresh ``t2i serve`` to see
cold loads (a base, LoRA or ControlNet already loaded reads as warm and is left out or noted).
The YAML is a valid ``trace_replay.simulator.config.SimConfig``; the raw samples and medians go to
a sibling ``.json`` (SimConfig forbids extra keys).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trace_replay.replay.mapping import conditioning_image_b64
from trace_replay.profile_fit import (build_sim_profile, fit_service, host_contention, load_seconds,
                                      median, ratio_overhead, render_table, yaml_text)

PROMPT = "a lighthouse at dusk, profiled"


@dataclass
class Sample:
    """One request and what the client and the server measured."""

    # probe, service, reprobe, rewarm (base loads if cold), lora-warmup, lora-first, lora-slot,
    # lora-store, cn-warmup, cn-first, cn-warm
    kind: str
    base: str
    steps: int
    size: str
    adapter: str | None = None
    latency_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    replica: str | None = None
    error: str | None = None
    group: int = -1  # 'concurrent' samples: the round they were sent in together

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pixels(self) -> int:
        width, height = map(int, self.size.split("x"))
        return width * height


class Prober:
    """Sends one generation request at a time and records a Sample for each."""

    def __init__(self, client, progress=None):
        self.client, self.progress = client, progress
        self.samples: list[Sample] = []
        self._control_images: dict[str, str] = {}

    def send(self, kind: str, base: str, steps: int, size: str, lora: str | None = None,
             controlnet: str | None = None, group: int = -1) -> Sample:
        body: dict = {"prompt": PROMPT, "model": base, "size": size, "num_inference_steps": steps,
                      "seed": 0, "n": 1, "cascade": False}
        if lora:
            body["loras"] = [{"id": lora, "scale": 0.8}]
        if controlnet:
            body["controlnets"] = [{"id": controlnet, "image": self._control_image(size),
                                    "conditioning_scale": 1.0}]
        sample = Sample(kind, base, steps, size, lora or controlnet, group=group)
        started = time.perf_counter()
        try:
            response = self.client.post("/v1/images/generations", json=body)
            sample.latency_s = time.perf_counter() - started
            if response.status_code == 200:
                payload = response.json()
                sample.timings = {k: float(v) for k, v in payload.get("timings", {}).items()}
                sample.replica = (payload.get("t2i") or {}).get("replica")
            else:
                sample.error = f"HTTP {response.status_code}: {response.text[:200]}"
        except Exception as exc:  # httpx errors: record and go on, a profile of the rest is useful
            sample.latency_s = time.perf_counter() - started
            sample.error = f"{type(exc).__name__}: {exc}"
        self.samples.append(sample)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix_str(f"{kind} {base} {sample.adapter or ''}".strip())
        return sample

    def _control_image(self, size: str) -> str:
        if size not in self._control_images:
            self._control_images[size] = conditioning_image_b64(*map(int, size.split("x")))
        return self._control_images[size]


@dataclass
class Plan:
    bases: list[dict]  # /v1/models entries of kind base
    loras: list[dict]
    controlnets: list[dict]
    sizes: list[str] | None  # None: per model (its default and its smallest size)
    steps: list[int] | None  # None: per model (its default steps and 3x)
    repeats: int
    adapters: int  # LoRAs and ControlNets probed, each


def _model_sizes(entry: dict, plan: Plan) -> list[str]:
    if plan.sizes:
        return plan.sizes
    sizes = entry.get("sizes") or ["64x64", "32x32"]
    smallest = min(sizes, key=lambda s: np.prod([int(v) for v in s.split("x")]))
    return [sizes[0], smallest] if smallest != sizes[0] else [sizes[0]]


def _model_steps(entry: dict, plan: Plan) -> list[int]:
    if plan.steps:
        return plan.steps
    default = int(entry.get("default_steps") or 2)
    return [default, 3 * default]


def measure(prober: Prober, plan: Plan) -> dict[str, str]:
    """Runs every phase; returns {model id: why it was skipped} for models that failed."""
    failed: dict[str, str] = {}
    good: list[dict] = []
    for entry in plan.bases:  # first request per base: its load, if it was not loaded yet
        size, steps = _model_sizes(entry, plan)[0], _model_steps(entry, plan)[0]
        sample = prober.send("probe", entry["id"], steps, size)
        if sample.ok:
            good.append(entry)
        else:
            failed[entry["id"]] = sample.error
    for entry in good:  # service time: warm, every step count x size, `repeats` times
        for _ in range(plan.repeats):
            for steps in _model_steps(entry, plan):
                for size in _model_sizes(entry, plan):
                    prober.send("service", entry["id"], steps, size)
    measure_contention(prober, plan)
    if len(good) >= 3:  # round robin again: with more bases than a replica holds, these load
        for entry in good:
            prober.send("reprobe", entry["id"], _model_steps(entry, plan)[0],
                        _model_sizes(entry, plan)[0])
    if not good:
        return failed
    base, size, steps = good[0]["id"], _model_sizes(good[0], plan)[0], _model_steps(good[0], plan)[0]
    other = good[1]["id"] if len(good) > 1 else None

    def rewarm(entry: dict) -> None:
        """A plain request first, so the adapter request after it finds its base loaded (with
        more bases than the replicas hold, the passes above evicted some); a base load if cold."""
        prober.send("rewarm", entry["id"], _model_steps(entry, plan)[0], _model_sizes(entry, plan)[0])

    rewarm(good[0])
    applicable = [e for e in plan.loras if not e.get("base_models") or base in e["base_models"]]
    # Last registered first: earlier traffic usually used the first ones, and a LoRA already in
    # the store would read as a warm load.
    def lora_after(entry: dict) -> None:
        prober.send("lora-slot", base, steps, size, lora=entry["id"])
        if other and (not entry.get("base_models") or other in entry["base_models"]):
            # in the store but in none of this base's slots: the swap alone (into another base)
            rewarm(good[1])
            prober.send("lora-store", other, _model_steps(good[1], plan)[0],
                        _model_sizes(good[1], plan)[0], lora=entry["id"])
            rewarm(good[0])

    _probe_adapters(list(reversed(applicable)), "lora", plan.adapters, failed,
                    lambda kind, e: prober.send(kind, base, steps, size, lora=e["id"]), lora_after)
    nets = [e for e in plan.controlnets if not e.get("base_models") or base in e["base_models"]]
    _probe_adapters(nets, "cn", plan.adapters, failed,
                    lambda kind, e: prober.send(kind, base, steps, size, controlnet=e["id"]),
                    lambda e: prober.send("cn-warm", base, steps, size, controlnet=e["id"]))
    return failed


def _probe_adapters(entries: list[dict], label: str, limit: int, failed: dict[str, str],
                    first_use, after) -> None:
    """Up to ``limit`` adapters: each one's first use (``first_use(kind, entry)``), then
    ``after(entry)``. The first adapter a fresh service sees also pays one-time imports (seconds):
    with a spare adapter, that one is sent as a warm-up and left out of the load figures."""
    probed, warmup = 0, len(entries) > limit
    for entry in entries:
        if probed >= limit:
            break
        first = first_use(f"{label}-warmup" if warmup else f"{label}-first", entry)
        if not first.ok:
            failed[entry["id"]] = first.error
            continue
        if warmup:
            warmup = False
            continue
        probed += 1
        after(entry)


def measure_contention(prober: Prober, plan: Plan, rounds: int = 5) -> None:
    """Replicas that share a host's processors slow each other down (two tiny-model replicas on
    this 2-core machine: +23% inference when both computed, measured in a live replay). Each
    replica's most recently served base model is surely resident there, so requests for those
    bases sent at once run on distinct replicas at the same time: kind 'concurrent', ``rounds``
    groups of each size from 2 to every replica, since the slowdown is not linear in the busy
    count (on 2 cores, two jobs share well and four take 2-3x as long)."""
    from concurrent.futures import ThreadPoolExecutor

    latest: dict[str, Sample] = {}
    for sample in prober.samples:
        if sample.kind == "service" and sample.ok and sample.replica:
            latest[sample.replica] = sample
    picks = list({s.base: s for s in latest.values()}.values())  # one request per distinct base
    if len(picks) < 2:
        return
    group = 0
    with ThreadPoolExecutor(len(picks)) as pool:
        for size in range(2, len(picks) + 1):
            for r in range(rounds):  # a different subset each round (the same one on a full round)
                chosen = [picks[(r + j) % len(picks)] for j in range(size)]
                list(pool.map(lambda s, g=group: prober.send("concurrent", s.base, s.steps, s.size, group=g),
                              chosen))
                group += 1


def summarize(samples: list[Sample], failed: dict[str, str]) -> dict:
    """The medians and fits the profile is built from (pure: unit tests feed it samples)."""
    ok = [s for s in samples if s.ok]
    service = [s for s in ok if s.kind == "service"]
    models = {}
    for base in dict.fromkeys(s.base for s in service):
        rows = [s for s in service if s.base == base]
        ref_pixels = max(s.pixels for s in rows)
        models[base] = fit_service([s.steps for s in rows], [s.pixels for s in rows],
                                   [s.timings.get("inference_s", 0.0) for s in rows], ref_pixels)
    stages = ("inference_s", "load_s", "queue_s", "preprocess_s", "discriminator_s")
    http = [s.latency_s - s.timings.get("total_s", 0.0) for s in service]
    server = [s.timings.get("total_s", 0.0) - sum(s.timings.get(k, 0.0) for k in stages)
              for s in service]
    loads = load_seconds(ok)
    return {
        "models": models,
        "overhead": {"http_s": median(http), "server_s": median(server),
                     "total_s": median([h + v for h, v in zip(http, server)]), "n": len(service)},
        "loads": loads,
        "inference_factors": {
            "lora": ratio_overhead(ok, ("lora-first", "lora-slot", "lora-store")),
            "controlnet": ratio_overhead(ok, ("cn-first", "cn-warm"))},
        "host": host_contention(ok),
        "failed": failed,
        "requests": len(samples),
    }


def component_sizes_gb(config_path: str | None) -> dict[str, float]:
    """Sizes of the config's base models, LoRAs and ControlNets from their folders, when the
    folders are on this machine (entries with size_bytes use it)."""
    if not config_path:
        return {}
    from deployments.config import load_config

    config = load_config(config_path)
    sizes = {}
    for entry in config.models:
        if entry.kind == "discriminator":
            continue
        if entry.size_bytes:
            sizes[entry.id] = entry.size_bytes / 1e9
        elif entry.path and Path(config.resolve_source(entry)).exists():
            folder = Path(config.resolve_source(entry))
            total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            if total > 0:
                sizes[entry.id] = total / 1e9
    return sizes


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="t2i profile", description="Measure a running t2i service over HTTP (service time "
        "per base model by steps and size, per-request overhead, base/LoRA/ControlNet loads) and "
        "write a simulator profile (SimConfig YAML) plus the raw samples as a sibling .json. "
        "Run it on a freshly started service to see cold loads.")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="service (default: %(default)s)")
    ap.add_argument("--out", default="profile.yaml", help="profile YAML to write; the raw "
                    "measurements go beside it with suffix .json (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="service-time requests per step count "
                    "and size (default: %(default)s)")
    ap.add_argument("--config", help="the service's t2i config, when its model folders are on this "
                    "machine: component sizes (components.sizes_gb) come from them")
    ap.add_argument("--models", help="comma-separated base-model ids to profile (default: all)")
    ap.add_argument("--steps", help="two step counts, e.g. 10,30 (default: each model's default "
                    "steps and 3x that)")
    ap.add_argument("--sizes", help="sizes, e.g. 512x512,768x768 (default: each model's default "
                    "size and its smallest)")
    ap.add_argument("--adapters", type=int, default=2, help="LoRAs and ControlNets probed, each "
                    "(default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON instead "
                    "of a table")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def run(args: argparse.Namespace) -> dict:
    import httpx

    from trace_replay.progress import progress

    started = time.perf_counter()
    with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
        listed = client.get("/v1/models")
        listed.raise_for_status()
        entries = listed.json()["data"]
        bases = [e for e in entries if e.get("kind") == "base"]
        if args.models:
            wanted = [m.strip() for m in args.models.split(",") if m.strip()]
            unknown = sorted(set(wanted) - {e["id"] for e in bases})
            if unknown:
                raise ValueError(f"--models: not base models of {args.url}: {', '.join(unknown)}")
            bases = [e for e in bases if e["id"] in wanted]
        plan = Plan(bases, [e for e in entries if e.get("kind") == "lora"],
                    [e for e in entries if e.get("kind") == "controlnet"],
                    [s.strip() for s in args.sizes.split(",")] if args.sizes else None,
                    [int(s) for s in args.steps.split(",")] if args.steps else None,
                    max(1, args.repeats), max(0, args.adapters))
        per_base = 1 + plan.repeats * 4 + (len(bases) >= 3)
        with progress(total=len(bases) * per_base + 7 * plan.adapters + 9, desc="profile",
                      disable=args.no_progress) as bar:
            prober = Prober(client, bar)
            failed = measure(prober, plan)
    summary = summarize(prober.samples, failed)
    sizes_gb = component_sizes_gb(args.config)
    defaults = {}  # what the simulator assumes when a trace row has no size or steps
    if bases:
        width, height = map(int, _model_sizes(bases[0], plan)[0].split("x"))
        defaults = {"default_pixels": width * height,
                    "default_steps": int(bases[0].get("default_steps") or _model_steps(bases[0], plan)[0])}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary.update(url=args.url, measured_at=now, client_host=socket.gethostname(),
                   repeats=plan.repeats, seconds=round(time.perf_counter() - started, 1),
                   sizes_gb=sizes_gb, defaults=defaults)
    summary["sim_profile"] = build_sim_profile(summary)
    return summary | {"samples": [asdict(s) for s in prober.samples]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, OSError) as exc:
        print(f"t2i profile: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # httpx.HTTPError and friends: the service is not there
        print(f"t2i profile: error talking to {args.url}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    if not result["models"]:
        print(f"t2i profile: no base model answered: {result['failed']}", file=sys.stderr)
        return 1
    out = Path(args.out)
    raw = out.with_suffix(".json") if out.suffix != ".json" else out.with_suffix(".raw.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(result, indent=1, default=float))
    out.write_text(yaml_text(result, raw.name))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, default=float))
    else:
        print(render_table(result))
        print(f"wrote {out} (simulator profile) and {raw} (raw samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
