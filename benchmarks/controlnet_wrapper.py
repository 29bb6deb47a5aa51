"""Building a ControlNet pipeline over a loaded base: diffusers' ``from_pipe`` against the
engine's ``controlnet_wrapper`` (the class's constructor over the same modules).

A replica builds one the first time a ControlNet (or set of them) meets a base model it holds,
and again whenever either is reloaded; the time is on the request's path and counted in its
``load_s``. Both builds run alternately on the same loaded modules (order flipped every pair, so
machine noise hits both alike), for one ControlNet and for two (a MultiControlNetModel), and the
images of both pipelines for the same seed are compared. Reports medians and the ratio.

With ``--real-size`` (a CUDA device): the same over real-size SD 1.5 in float16 (random weights
from the published configs, lora_overhead.build_sd15) and a real-size ControlNet made from its
UNet (``ControlNetModel.from_unet``), both saved and loaded through the engine; images at 512x512.

Run: python benchmarks/controlnet_wrapper.py [--repeats 40] [--models DIR] [--device cpu]
     python benchmarks/controlnet_wrapper.py --real-size --device cuda   (writes controlnet_wrapper_h200.json on an H200)
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
    ap.add_argument("--real-size", action="store_true",
                    help="real-size SD 1.5 and ControlNet in float16 (needs --device cuda)")
    ap.add_argument("--out", help="result file (default results/controlnet_wrapper.json, "
                    "or controlnet_wrapper_<device>.json with --real-size)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.real_size and not args.device.startswith("cuda"):
        ap.error("--real-size builds float16 SD 1.5 models: it needs --device cuda")

    import numpy as np
    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
    from PIL import Image

    from deployments.pipeline_engine import PipelineEngine, controlnet_wrapper

    if args.real_size:
        config, base_id, cn_ids = real_size_config(args.device)
        size = 512
    else:
        config, base_id, cn_ids = load_bench_config(models_dir(args.models)), "tiny-sd-light", \
            ("tiny-cn-canny", "tiny-cn-edges")
        size = 64
    engine = PipelineEngine(config, device=args.device)
    base = engine.load_pipeline(base_id).pipe
    nets = [engine.load_controlnet_model(cn) for cn in cn_ids]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ramp = np.arange(size, dtype=np.uint8)[:, None, None] * (256 // size)
    control = Image.fromarray(np.tile(ramp, (1, size, 3)))

    dtype = base.unet.dtype

    def from_pipe(net):
        # torch_dtype given: without it from_pipe casts every shared module to float32 in place
        pipe = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=net, torch_dtype=dtype)
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
                sync()
                started = time.perf_counter()
                builders[name](net)
                sync()
                times[name].append(time.perf_counter() - started)
        images = []
        for name, build in builders.items():
            image = control if case == "1 ControlNet" else [control, control]
            out = build(net)("a lighthouse", image=image, num_inference_steps=2, width=size,
                             height=size, generator=torch.Generator("cpu").manual_seed(11), output_type="np").images[0]
            images.append(out)
        assert base.unet.dtype == dtype and base.vae.dtype == dtype, "a build changed the base's dtype"
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"case": case, "from_pipe_ms": round(med["from_pipe"] * 1e3, 3),
                     "controlnet_wrapper_ms": round(med["controlnet_wrapper"] * 1e3, 3),
                     "speedup": round(med["from_pipe"] / med["controlnet_wrapper"], 1),
                     "same_image": bool(np.array_equal(images[0], images[1])), "repeats": args.repeats})

    print(f"{'case':14s} | {'from_pipe ms':>12s} | {'wrapper ms':>10s} | {'speedup':>7s} | same image")
    for r in rows:
        print(f"{r['case']:14s} | {r['from_pipe_ms']:12.3f} | {r['controlnet_wrapper_ms']:10.3f} | "
              f"{r['speedup']:6.1f}x | {r['same_image']}")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    models = ("real-size SD 1.5 and ControlNet (random weights), float16" if args.real_size
              else "the tiny demo models")
    out = args.out or str(RESULTS / ("controlnet_wrapper_" + device_name.split()[-1].lower() + ".json"
                                     if args.real_size else "controlnet_wrapper.json"))
    write_result(out, {"benchmark": "controlnet_wrapper", "device": args.device,
                       "device_name": device_name, "models": models,
                       "note": f"medians of alternating builds over the same loaded {models}; from_pipe "
                               "given torch_dtype=the base's dtype",
                       "rows": rows, "machine": machine_info()})


def real_size_config(device: str):
    """(config, base id, ControlNet ids): real-size SD 1.5 from lora_overhead.build_sd15 and two
    real-size ControlNets made from its UNet, saved float16 beside it."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from benchmarks.lora_overhead import build_sd15
    from deployments.config import ModelEntry

    config, _ = build_sd15(device, loras=0)
    base = config.entry("sd15-random")
    root = Path(base.path).parent
    unet = UNet2DConditionModel.from_pretrained(base.path, subfolder="unet")
    entries = list(config.models)
    for i, cn_id in enumerate(("sd15-cn-a", "sd15-cn-b")):
        torch.manual_seed(i)
        net = ControlNetModel.from_unet(unet)
        # from_unet zeroes the output convolutions; random ones make the ControlNet change the image
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=0.02)
        net.to(torch.float16).save_pretrained(str(root / cn_id), safe_serialization=True)
        entries.append(ModelEntry(id=cn_id, kind="controlnet", path=str(root / cn_id), dtype="float16"))
    del unet
    return config.model_copy(update={"models": entries}), "sd15-random", ("sd15-cn-a", "sd15-cn-b")


if __name__ == "__main__":
    main()
