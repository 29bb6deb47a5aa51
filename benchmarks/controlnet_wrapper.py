"""Building a ControlNet pipeline over a loaded base: diffusers' ``from_pipe`` against the
engine's ``controlnet_wrapper`` (the class's constructor over the same modules).

A replica builds one the first time a ControlNet (or set of them) meets a base model it holds,
and again whenever either is reloaded; the time is on the request's path and counted in its
``load_s``. Both builds run alternately on the same loaded modules (order flipped every pair, so
machine noise hits both alike), for one ControlNet and for two (a MultiControlNetModel), and the
images of both pipelines for the same seed are compared. Reports medians and the ratio.

Run: python benchmarks/controlnet_wrapper.py [--repeats 40] [--models DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402
from benchmarks.serving_overhead import load_bench_config, models_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40, help="builds per method and case")
    ap.add_argument("--models", help="a demo model folder (t2i demo-models); built in a temp dir if absent")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS / "controlnet_wrapper.json"))
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    import numpy as np
    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
    from PIL import Image

    from deployments.pipeline_engine import PipelineEngine, controlnet_wrapper

    config = load_bench_config(models_dir(args.models))
    engine = PipelineEngine(config, device=args.device)
    base = engine.load_pipeline("tiny-sd-light").pipe
    nets = [engine.load_controlnet_model(cn) for cn in ("tiny-cn-canny", "tiny-cn-edges")]
    control = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[:, None, None] * 4, (1, 64, 3)))

    def from_pipe(net):
        pipe = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=net)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def ours(net):
        return controlnet_wrapper(StableDiffusionControlNetPipeline, base, net)

    builders = {"from_pipe": from_pipe, "controlnet_wrapper": ours}
    rows = []
    for case, net in (("1 ControlNet", nets[0]), ("2 ControlNets", MultiControlNetModel(nets))):
        times: dict[str, list[float]] = {name: [] for name in builders}
        for i in range(args.repeats):
            for name in (list(builders) if i % 2 == 0 else list(builders)[::-1]):
                started = time.perf_counter()
                builders[name](net)
                times[name].append(time.perf_counter() - started)
        images = []
        for name, build in builders.items():
            image = control if case == "1 ControlNet" else [control, control]
            out = build(net)("a lighthouse", image=image, num_inference_steps=2, width=64, height=64,
                             generator=torch.Generator("cpu").manual_seed(11), output_type="np").images[0]
            images.append(out)
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"case": case, "from_pipe_ms": round(med["from_pipe"] * 1e3, 3),
                     "controlnet_wrapper_ms": round(med["controlnet_wrapper"] * 1e3, 3),
                     "speedup": round(med["from_pipe"] / med["controlnet_wrapper"], 1),
                     "same_image": bool(np.array_equal(images[0], images[1])), "repeats": args.repeats})

    print(f"{'case':14s} | {'from_pipe ms':>12s} | {'wrapper ms':>10s} | {'speedup':>7s} | same image")
    for r in rows:
        print(f"{r['case']:14s} | {r['from_pipe_ms']:12.3f} | {r['controlnet_wrapper_ms']:10.3f} | "
              f"{r['speedup']:6.1f}x | {r['same_image']}")
    write_result(args.out, {"benchmark": "controlnet_wrapper", "device": args.device,
                            "note": "medians of alternating builds over the same loaded tiny demo models",
                            "rows": rows, "machine": machine_info()})


if __name__ == "__main__":
    main()
