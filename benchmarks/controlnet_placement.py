"""ControlNet placement: co-located module vs per-step calls to the ControlNet deployment.

Both designs run side by side in one Serve instance: the app with `controlnet_mode: colocated` at
"/" and the same app with `controlnet_mode: remote` at "/remote". Requests alternate between the
two (order flipped every pair) so machine noise hits both alike. For 1 and 2 ControlNets it reports
end-to-end HTTP latency p50/p99, the added latency of remote mode per denoising step and per
remote call, how many remote calls a request makes (counted in-process through the real
`remote_controlnet` wrapper), and whether both modes give the same image for the same seed.

Run: python -m benchmarks.controlnet_placement [--requests 30] [--steps 4] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also runnable as `python benchmarks/controlnet_placement.py`
    sys.path.insert(0, str(REPO))

from benchmarks.serving_overhead import (BASE, RESULTS, finish, http_post,  # noqa: E402
                                         load_bench_config, machine, models_dir, start_ray,
                                         stop_ray, summary)

CONTROLNETS = (("tiny-cn-canny", "canny"), ("tiny-cn-edges", "sobel"))
SAME_IMAGE_TOLERANCE = 2  # uint8 levels: the two modes run the ControlNet in different processes


def control_image_b64(size: int = 64) -> str:
    """A deterministic conditioning source with edges for canny/sobel to find."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (20, 20, 20))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, size - 20, size - 20), outline=(240, 240, 240), width=3)
    draw.rectangle((size // 2, size // 3, size - 6, size - 6), fill=(120, 200, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode(response: dict) -> np.ndarray:
    from PIL import Image

    raw = base64.b64decode(response["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(np.int16)


def count_remote_calls(config, size: int, steps: int) -> dict:
    """ControlNet forwards per request, counted on the real `remote_controlnet` proxy with
    ControlNet.residuals called in-process (the count does not depend on the transport)."""
    from deployments import controlnet as dc
    from deployments import preprocessors
    from deployments.pipeline_engine import GenerationSpec, PipelineEngine

    engine, service = PipelineEngine(config), dc.ControlNet(config)
    loaded = engine.load_pipeline(BASE)
    source = preprocessors.decode_image(base64.b64decode(control_image_b64()))
    out: dict = {}
    for count in (1, 2):
        nets = CONTROLNETS[:count]
        images = [preprocessors.prepare(source, pre, size, size) for _, pre in nets]
        spec = GenerationSpec(prompt="count", base_model=BASE, width=size, height=size,
                              steps=steps, guidance_scale=5.0, seed=3,
                              controlnets=tuple((cn, 1.0) for cn, _ in nets))
        made: list = []

        def factory(cn_id: str):
            made.append(dc.remote_controlnet(cn_id, service.config_of(cn_id),
                                             lambda *a: service.residuals(*a), engine.device))
            return made[-1]

        engine.generate(loaded, spec, control_images=images, controlnet_factory=factory)
        out[str(count)] = sum(m.remote_calls for m in made)
    return out


def measure(config, size: int, steps: int, requests: int) -> dict:
    import httpx
    from ray import serve

    from app.builder import build_app
    from app.server import start_serve

    start_serve(config)  # colocated app at "/"
    remote = config.model_copy(update={"controlnet_mode": "remote", "app_name": "t2i-remote"})
    serve.run(build_app(remote), name="t2i-remote", route_prefix="/remote", blocking=False)
    client = httpx.Client(base_url=f"http://127.0.0.1:{config.port}", timeout=300)
    paths = {"colocated": "/v1/images/generations", "remote": "/remote/v1/images/generations"}
    image = control_image_b64()
    base = {"prompt": "a house by a lake", "base_model": BASE, "size": f"{size}x{size}",
            "num_inference_steps": steps, "guidance_scale": 5.0, "seed": 4321}
    plain = decode(http_post(client, paths["colocated"], base))
    results: dict = {}
    for count in (1, 2):
        body = dict(base, controlnets=[{"id": cn, "image": image, "conditioning_scale": 1.0,
                                        "preprocessor": pre} for cn, pre in CONTROLNETS[:count]])
        first = {mode: http_post(client, path, body) for mode, path in paths.items()}
        for _ in range(2):  # warm-up: ControlNet modules, configs, pipelines built on first use
            for path in paths.values():
                http_post(client, path, body)
        latency: dict[str, list] = {m: [] for m in paths}
        timings: dict[str, list] = {m: [] for m in paths}
        for i in range(requests):
            for mode in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
                started = time.perf_counter()
                response = http_post(client, paths[mode], body)
                latency[mode].append(time.perf_counter() - started)
                timings[mode].append(response["timings"])
        col, rem = summary(latency["colocated"]), summary(latency["remote"])
        added = rem["p50_ms"] - col["p50_ms"]
        diff = int(np.abs(decode(first["colocated"]) - decode(first["remote"])).max())
        results[str(count)] = {
            "colocated": col, "remote": rem,
            "remote_minus_colocated_p50_ms": round(added, 2),
            "remote_minus_colocated_p99_ms": round(rem["p99_ms"] - col["p99_ms"], 2),
            "ratio_p50": round(rem["p50_ms"] / col["p50_ms"], 3),
            "added_ms_per_step": round(added / steps, 2),
            "added_ms_per_remote_call": round(added / (steps * count), 2),
            "remote_calls_per_request_expected": steps * count,
            "timings_p50_ms": {m: {k: round(float(np.median([t[k] for t in timings[m]])) * 1000, 2)
                                   for k in ("preprocess_s", "load_s", "inference_s", "total_s")}
                               for m in paths},
            "same_image_max_abs_diff": diff, "same_image": diff <= SAME_IMAGE_TOLERANCE,
            # the ControlNet must visibly change the image, or "same image" proves nothing
            "controlnet_changes_image_max_abs_diff": int(np.abs(decode(first["colocated"]) - plain).max()),
        }
    client.close()
    return results


def print_table(result: dict) -> None:
    p = result["params"]
    print(f"\nControlNet placement ({p['size']}px, {p['steps']} steps, {p['requests']} requests per "
          f"mode; remote calls per request counted in-process: {result['remote_calls']})")
    print(f"{'CNs':>3} {'mode':<10} {'p50 ms':>8} {'p99 ms':>8} {'inference p50':>14} "
          f"{'added p50':>10} {'/step':>7} {'/call':>7} {'calls':>6} {'max|diff|':>9}")
    for count, row in result["placement"].items():
        for mode in ("colocated", "remote"):
            s, t = row[mode], row["timings_p50_ms"][mode]
            line = f"{count:>3} {mode:<10} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} {t['inference_s']:>14.1f}"
            if mode == "remote":
                line += (f" {row['remote_minus_colocated_p50_ms']:>10.1f} {row['added_ms_per_step']:>7.1f}"
                         f" {row['added_ms_per_remote_call']:>7.1f} "
                         f"{row['remote_calls_per_request_expected']:>6} {row['same_image_max_abs_diff']:>9}")
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="per mode and ControlNet count")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, choices=[32, 64, 128])
    parser.add_argument("--models", help="demo models folder (default: build into a temp dir)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 requests, 2 steps")
    parser.add_argument("--out", default=str(RESULTS / "controlnet_placement.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.steps = 4, 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # as in a replica; only the in-process call count runs here
    started = time.time()
    config = load_bench_config(models_dir(args.models))
    result: dict = {"benchmark": "controlnet_placement", "machine": machine(),
                    "params": {k: v for k, v in vars(args).items() if k not in ("out", "models")}}
    result["remote_calls"] = count_remote_calls(config, args.size, args.steps)
    start_ray(num_cpus=2)  # two BaseModel replicas (one per app) reserve 1 CPU each
    try:
        result["placement"] = measure(config, args.size, args.steps, args.requests)
    finally:
        stop_ray()
    for count, row in result["placement"].items():
        row["remote_calls_per_request_counted"] = result["remote_calls"][count]
    finish(result, started, args.out, print_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
