"""Does a load ahead hide behind a running request on one device, and what does it cost that request?

The coordinator's load ahead (`control.load_ahead`, deployments/model_cache.py `load_ahead`) starts
loading a queued request's base model while the replica's running request computes, on the same
device; the simulator (trace_replay/simulator/engine.py) prices it as if the load and the compute
each ran at their own speed, side by side. This measures that assumption through the engine: one
pipeline generates while the engine loads another base model in a second thread (started
together), against each one alone, in the same rounds:

- ``generate_x``: the overlapped generation's time over the generation alone (1.0: untouched);
- ``load_x``: the overlapped load's time over the load alone;
- ``hidden``: the share of the load's own time taken off the pair's serial time
  ((generate + load - makespan) / load, the makespan from the first piece of work's start to
  when both had ended; 1.0: the load was free, 0: no overlap at all), and ``pair_x``: that
  makespan over one after the other (above 1: worse than serial); ``delivered``: from the
  submission until both threads had handed their results back (later still: a thread that has
  finished waits for the GIL while the other computes, and idle threads take time to wake);
- the overlapped image against the image alone (same seed): it must be identical.

With CUDA the load is measured three ways: a read of page-cached files, a cold read (with root),
and the model cache's host-tier reload (pinned host memory to the device).

On a CPU: the tiny demo models (generating tiny-sd-light while tiny-sd-heavy loads), torch's
threads as they are. With CUDA: real-size SD 1.5 (random weights from the published configs,
float16, 512x512, 25 steps), the second base a second copy of the same files (page-cached), timed
with the threads' own streams synchronized; with root, also a cold read (page cache dropped before each load).
Medians of the rounds. Writes benchmarks/results/load_overlap_<cpu|device>.json.

    python benchmarks/load_overlap.py                 # CPU, tiny models
    python benchmarks/load_overlap.py --rounds 5      # on a GPU machine: the real-size part too
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, write_result  # noqa: E402
from benchmarks.lora_overhead import DEFAULT_CONFIG, SD15_SPEC, build_sd15, machine  # noqa: E402

TINY_SPEC = dict(prompt="a lighthouse at dusk", width=64, height=64, steps=4, guidance_scale=5.0, seed=11)


def _sync(device: str):
    """Wait for this thread's stream (the default stream), not the whole device: a device-wide
    synchronize in one thread would also wait for the other thread's work."""
    import torch

    return (lambda: torch.cuda.current_stream().synchronize()) if device.startswith("cuda") else (lambda: None)


def _drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(config, runner: str, loadee: str, spec_args: dict, device: str, rounds: int,
            cold: bool = False, from_host: bool = False) -> dict:
    """Rounds of (generate alone, load alone, both at once), in that order, after a warm-up.
    ``from_host``: the load is the model cache's host-tier reload (pinned host memory to the
    device, EngineModels.to_device) instead of a read of the files."""
    import torch

    from deployments.pipeline_engine import EngineModels, PipelineEngine
    from deployments.spec import GenerationSpec

    sync = _sync(device)
    engine = PipelineEngine(config, device=device)
    engine.warm_up()
    running = engine.load_pipeline(runner)
    spec = GenerationSpec(base_model=runner, **spec_args)

    # Each returns (start, end, result) on the perf_counter clock, so an overlapped pair is read
    # from when each piece of work ended, not from when its thread got its result back to the
    # caller: a thread that has finished waits for the GIL to return while the other computes
    # (measured on the 2-core CPU: a load done at 0.09 s came back at 0.69 s), which a replica's
    # next request would not wait for once the running one ends.
    def generate():
        sync()
        t = time.perf_counter()
        image = engine.generate(running, spec).images[0]
        sync()
        return t, time.perf_counter(), np.asarray(image)

    models = EngineModels(engine)
    parked = None
    if from_host:  # loaded once, then kept in pinned host memory between the timed reloads
        parked = engine.load_pipeline(loadee)
        models.to_host(parked)

    def load():
        if from_host:
            sync()
            t = time.perf_counter()
            models.to_device(parked)
            sync()
            return t, time.perf_counter(), parked
        if cold:
            _drop_page_cache()
        sync()
        t = time.perf_counter()
        loaded = engine.load_pipeline(loadee)
        sync()
        return t, time.perf_counter(), loaded

    def free(loaded) -> None:  # outside every timed window: gc and empty_cache stall the device
        if from_host:
            models.to_host(loaded)
            sync()
            return
        loaded._free()
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    # One thread generates and one loads, each kept for the whole run as a replica's worker
    # threads are (a fresh thread's first CUDA calls set up its own library handles), so "alone"
    # and "overlapped" differ only in whether the other thread works at the same time.
    gen_pool, load_pool = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    *_, reference = gen_pool.submit(generate).result()  # warm-up of both threads
    free(load_pool.submit(load).result()[2])
    rows: dict[str, list[float]] = {k: [] for k in (
        "generate_alone", "load_alone", "generate_overlapped", "load_overlapped", "makespan", "delivered",
        "generate_start_delay", "load_start_delay")}
    identical = True
    for _ in range(rounds):
        g0, g1, image = gen_pool.submit(generate).result()
        rows["generate_alone"].append(g1 - g0)
        identical &= bool(np.array_equal(image, reference))
        l0, l1, loaded = load_pool.submit(load).result()
        rows["load_alone"].append(l1 - l0)
        free(loaded)
        t0 = time.perf_counter()
        generating, loading = gen_pool.submit(generate), load_pool.submit(load)
        (g0, g1, image), (l0, l1, loaded) = generating.result(), loading.result()
        rows["delivered"].append(time.perf_counter() - t0)
        rows["makespan"].append(max(g1, l1) - min(g0, l0))  # from the first start to both done
        rows["generate_start_delay"].append(g0 - t0)
        rows["load_start_delay"].append(l0 - t0)
        free(loaded)
        rows["generate_overlapped"].append(g1 - g0)
        rows["load_overlapped"].append(l1 - l0)
        identical &= bool(np.array_equal(image, reference))
    gen_pool.shutdown()
    load_pool.shutdown()
    a = {k: np.array(v) for k, v in rows.items()}
    serial = a["generate_alone"] + a["load_alone"]

    def median(x) -> float:  # of the per-round values
        return round(float(np.median(x)), 3)

    return {"runner": runner, "loadee": loadee, "device": device, "rounds": rounds, "cold": cold,
            "from_host": from_host, "spec": spec_args,
            "median_s": {k: round(float(np.median(v)), 4) for k, v in a.items()},
            "generate_x": median(a["generate_overlapped"] / a["generate_alone"]),
            "load_x": median(a["load_overlapped"] / a["load_alone"]),
            "hidden": median((serial - a["makespan"]) / a["load_alone"]),
            # both at once over one after the other (1.0: no gain; above: worse than serial)
            "pair_x": median(a["makespan"] / serial),
            "images_identical": identical, "samples_s": {k: [round(x, 4) for x in v] for k, v in rows.items()}}


def tiny_config():
    from app.demo_models import build_demo_models
    from deployments.config import load_config

    models = tempfile.mkdtemp(prefix="t2i-bench-models-")
    atexit.register(shutil.rmtree, models, ignore_errors=True)
    build_demo_models(models, seed=0, progress=False)
    return load_config(DEFAULT_CONFIG, {"model_root": models})


def sd15_config():
    """Real-size SD 1.5 under two ids: the second a copy of the first folder (its own files)."""
    from deployments.config import ModelEntry

    config, _ = build_sd15("cuda", loras=0)
    first = config.entry("sd15-random")
    copy = Path(first.path).with_name("sd15-b")
    shutil.copytree(first.path, copy)
    entry = ModelEntry(id="sd15-random-b", kind="base", path=str(copy), dtype="float16")
    return config.model_copy(update={"models": [*config.models, entry]})


def print_part(title: str, part: dict) -> None:
    m = part["median_s"]
    how = ", cold reads" if part["cold"] else ", host-tier reloads" if part.get("from_host") else ""
    print(f"\n{title} ({part['rounds']} rounds, medians{how})")
    print(f"  generate {part['runner']:<14} alone {m['generate_alone']:.3f} s, beside a load "
          f"{m['generate_overlapped']:.3f} s  (x{part['generate_x']:.2f})")
    print(f"  load     {part['loadee']:<14} alone {m['load_alone']:.3f} s, beside a request "
          f"{m['load_overlapped']:.3f} s  (x{part['load_x']:.2f})")
    hidden = f"{part['hidden']:.0%} of the load hidden" if part["hidden"] > 0 else "none of the load hidden"
    print(f"  both at once {m['makespan']:.3f} s against {m['generate_alone'] + m['load_alone']:.3f} s "
          f"one after the other (x{part['pair_x']:.2f}): {hidden}; images identical: {part['images_identical']}")
    print(f"  (results back in the caller after {m['delivered']:.3f} s; starts delayed "
          f"{m['generate_start_delay']:.3f} s generate, {m['load_start_delay']:.3f} s load)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per part (default 5)")
    ap.add_argument("--skip-cpu", action="store_true", help="only the GPU part (when a GPU is there)")
    ap.add_argument("--switch-interval", type=float,
                    help="Python's GIL switch interval in seconds for the run (default: Python's, 0.005): "
                         "a launch-bound generation waits up to this long for the GIL at every handoff")
    ap.add_argument("--read-threads", type=int,
                    help="the direct loader's reading threads (deployments/direct_load.READ_THREADS)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-read part on a GPU")
    ap.add_argument("--out", help="result file (default: results/load_overlap_<cpu|device>.json)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from deployments import direct_load

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.read_threads is not None:
        direct_load.READ_THREADS = args.read_threads
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    started = time.time()
    gpu = torch.cuda.is_available()
    result: dict = {"benchmark": "load_overlap", "machine": machine(),
                    "params": {**vars(args), "switch_interval_s": sys.getswitchinterval(),
                               "read_threads": direct_load.READ_THREADS}}
    if not (gpu and args.skip_cpu):
        result["cpu_tiny"] = measure(tiny_config(), "tiny-sd-light", "tiny-sd-heavy", TINY_SPEC, "cpu", args.rounds)
        print_part("CPU, tiny demo models", result["cpu_tiny"])
    if gpu:
        config = sd15_config()
        name = torch.cuda.get_device_name()
        result["gpu_sd15"] = measure(config, "sd15-random", "sd15-random-b", SD15_SPEC, "cuda", args.rounds)
        result["gpu_sd15"]["device_name"] = name
        print_part(f"GPU ({name}), real-size SD 1.5, float16, warm reads", result["gpu_sd15"])
        result["gpu_sd15_host"] = measure(config, "sd15-random", "sd15-random-b", SD15_SPEC, "cuda",
                                          args.rounds, from_host=True)
        print_part(f"GPU ({name}), real-size SD 1.5, float16, host-tier reloads", result["gpu_sd15_host"])
        if args.no_cold:
            result["gpu_sd15_cold"] = "skipped: --no-cold"
        elif _drop_page_cache():
            result["gpu_sd15_cold"] = measure(config, "sd15-random", "sd15-random-b", SD15_SPEC, "cuda",
                                              args.rounds, cold=True)
            print_part(f"GPU ({name}), real-size SD 1.5, float16, cold reads", result["gpu_sd15_cold"])
        else:
            result["gpu_sd15_cold"] = "skipped: the page cache cannot be dropped here (not root)"
    else:
        result["gpu_sd15"] = "skipped: no CUDA device on this machine"
    result["wall_s"] = round(time.time() - started, 1)
    tag = result["gpu_sd15"]["device_name"].split()[-1].lower() if gpu else "cpu"
    write_result(args.out or str(RESULTS / f"load_overlap_{tag}.json"), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
