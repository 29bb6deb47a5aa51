"""`t2i`: serve the application, build the demo models, work with traces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def _serve(args: argparse.Namespace) -> int:
    from deployments.config import ConfigError, load_config
    from app.server import missing_local_models, run_server

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("metrics_export_port", args.metrics_port)) if v is not None}
    if args.model_root:
        overrides["model_root"] = args.model_root
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"t2i serve: {exc}", file=sys.stderr)
        return 2
    if args.policies:
        config = config.model_copy(update={"control": config.control.model_copy(
            update={"policies": args.policies})})
    missing = missing_local_models(config)
    if missing:
        print("t2i serve: these models' folders do not exist under "
              f"{config.model_root!r}: {', '.join(missing)}.\n"
              "Build the demo models with `t2i demo-models --out models/demo` (or `make serve`), "
              "or fix the paths in the config.", file=sys.stderr)
        return 2
    try:  # a bad key file stops here, before Ray starts (the builder reads the keys again)
        from app.auth import AccessKeys, access_summary

        print(access_summary(config.host, AccessKeys.load(config.security)), flush=True)
    except ConfigError as exc:
        print(f"t2i serve: {exc}", file=sys.stderr)
        return 2
    return run_server(config, address=args.address, num_cpus=args.num_cpus)


def _demo_models(args: argparse.Namespace) -> int:
    from app.demo_models import build_demo_models

    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        print(f"{out}/manifest.json exists; use --force to rebuild")
        return 0
    try:
        manifest = build_demo_models(out, seed=args.seed, progress=not args.quiet,
                                     with_sdxl=args.with_sdxl, bases=args.bases, loras=args.loras,
                                     controlnets=args.controlnets, replicas=args.replicas)
    except ValueError as exc:
        print(f"t2i demo-models: {exc}", file=sys.stderr)
        return 2
    total = sum(m["size_bytes"] for m in manifest["models"])
    print(f"built {len(manifest['models'])} models ({total / 1e6:.1f} MB) in "
          f"{manifest['build_seconds']} s under {out}; serve them with "
          f"`t2i serve --config {out / 'config.yaml'}`")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from deployments.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    kinds = {k: len(config.ids(k)) for k in ("base", "controlnet", "lora", "discriminator")}
    print(f"{args.config}: valid; models: {kinds}")
    return 0


def _discriminator_train(args: argparse.Namespace) -> int:
    import time
    import warnings

    import diffusers
    import torch
    import transformers

    from deployments.config import ConfigError, load_config
    from deployments.discriminator_train import (TrainError, TrainSettings, config_snippet,
                                                 read_prompts, train_discriminator)
    from deployments.errors import ModelLoadError
    from deployments.pipeline_engine import pick_device
    from trace_replay.paths import diffserve_dir

    def fail(message: str) -> int:
        print(f"t2i discriminator train: {message}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    try:
        config = load_config(args.config, {"model_root": args.model_root} if args.model_root else None)
    except ConfigError as exc:
        return fail(str(exc))
    light, heavy = args.light or config.cascade.light, args.heavy or config.cascade.heavy
    if light is None or heavy is None:
        return fail(f"{args.config} sets no cascade.light/cascade.heavy; name them with --light and --heavy")
    init = args.init
    if init is None and config.cascade.discriminator:  # fine-tune the config's, once it exists
        entry = config.entry(config.cascade.discriminator)
        init = entry.id if Path(config.resolve_source(entry)).exists() else "fresh"
    device = pick_device() if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        return fail(f"--device {device}: CUDA is not available here (use --device cpu or auto)")
    settings = TrainSettings(
        light=light, heavy=heavy, init=None if init == "fresh" else init, n_prompts=args.n_prompts,
        holdout=args.holdout, epochs=args.epochs, steps=args.steps, size=args.size, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, device=device)
    out = Path(args.out or Path(config.model_root) / "discriminator" / f"{light}-vs-{heavy}")
    # Only the trainer's own bars: the loaders' bars, and the tokenizer's warning on every
    # prompt over 77 tokens, would bury them (errors still show).
    for library in (transformers, diffusers):
        library.logging.set_verbosity_error()
        library.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # LoRA slots, 2nd load
    warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated")  # the engine's loader
    prompts_file = Path(args.prompts or diffserve_dir() / "traces" / "text_diffusiondb_2m_first_5k.txt")
    try:
        prompts, available = read_prompts(prompts_file, args.n_prompts, args.seed)
        print(f"training a discriminator: {light} (label 0) vs {heavy} (label 1), "
              f"{len(prompts)} of {available} prompts from {prompts_file}, held out "
              f"{args.holdout:.0%}, init {settings.init or 'fresh'}, device {device}", flush=True)
        report = train_discriminator(config, settings, prompts, out, force=args.force,
                                     progress=not args.quiet)
    except (TrainError, ModelLoadError) as exc:
        return fail(str(exc))
    print(report.summary())
    print(f"saved {out} in {time.perf_counter() - started:.1f} s; add it to the config:\n")
    print(config_snippet(config, out), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2i", description="Text-to-image serving on Ray Serve: Stable-Diffusion-class "
        "pipelines with LoRAs, ControlNets and cascades behind an OpenAI-compatible API.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start Ray (or join a cluster) and serve until Ctrl-C",
                           description="Serve the config's models at http://HOST:PORT "
                           "(POST /v1/images/generations, GET /v1/models, GET /healthz). "
                           "Ctrl-C or SIGTERM shuts Serve and Ray down cleanly.")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help="t2i config YAML "
                       "(default: the embedded tiny-model demo, %(default)s)")
    serve.add_argument("--host", help="override the config's host")
    serve.add_argument("--port", type=int, help="override the config's port")
    serve.add_argument("--model-root", help="override the config's model_root")
    serve.add_argument("--address", help="join a running Ray cluster (e.g. 'auto') instead of "
                       "starting a local Ray instance")
    serve.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs for the local Ray instance (default: all)")
    serve.add_argument("--policies", choices=("coordinator", "ray-default"),
                       help="the whole control set, overriding the config's control.policies: "
                       "coordinator (cache coordinator, replica model cache, cache-aware router, "
                       "custom autoscaler) or ray-default (serve.multiplexed LRU, Ray's router "
                       "and queue-length autoscaler); default: the config's, which defaults "
                       "to coordinator")
    serve.add_argument("--metrics-port", type=int, help="Prometheus export port of the local "
                       "Ray instance (overrides the config's metrics_export_port)")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo-models", help="build the tiny random-weight demo models",
                          description="Build deterministic random-weight models in diffusers "
                          "layout: light and heavy SD base models, two ControlNets, eight LoRAs "
                          "of ranks 1-32, and a discriminator (a few seconds, ~17 MB), plus "
                          "OUT/config.yaml serving them. --bases/--loras/--controlnets add "
                          "more, all applicable to every base, e.g. `--out models/many --bases 8 "
                          "--loras 64` for a trace replay that exercises the caches.")
    demo.add_argument("--out", default="models/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="weights seed (default: %(default)s)")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--with-sdxl", action="store_true", help="also build a tiny SDXL-class "
                      "pipeline (id tiny-sdxl, arch sdxl) for trying SDXL configs")
    demo.add_argument("--bases", type=int, default=2, help="base models: light, heavy, then "
                      "tiny-sd-b00.. (default: %(default)s)")
    demo.add_argument("--loras", type=int, default=8, help="LoRAs: the eight named ones, then "
                      "tiny-lora-000.. (default: %(default)s)")
    demo.add_argument("--controlnets", type=int, default=2, help="ControlNets: canny, edges, "
                      "then tiny-cn-00.. (default: %(default)s)")
    demo.add_argument("--replicas", type=int, default=2, help="BaseModel replicas in the "
                      "generated OUT/config.yaml, sharing one CPU (default: %(default)s)")
    demo.set_defaults(func=_demo_models)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", help="t2i config YAML")
    check.set_defaults(func=_check_config)

    disc = sub.add_parser("discriminator", help="the cascade's discriminator (see `t2i "
                          "discriminator train --help`)").add_subparsers(dest="action", required=True)
    train = disc.add_parser(
        "train", help="train it on light- vs heavy-model images of the same prompts",
        description="Generate one image per prompt with the light and with the heavy model "
        "(the service's own loading and generation code), label them 0 and 1 by which model "
        "made them (as DiffServe does), train the discriminator, print its accuracy on held-out "
        "prompts, and save config.json + model.safetensors to --out, ready for a config's "
        "`kind: discriminator` entry.")
    train.add_argument("--config", default=DEFAULT_CONFIG, help="t2i config YAML naming the "
                       "models (default: the embedded tiny-model demo, %(default)s)")
    train.add_argument("--model-root", help="override the config's model_root")
    train.add_argument("--prompts", default=None, help="text file, one prompt per line (default: "
                       "DiffusionDB's first 5k under ../shared/data/diffserve/traces)")
    train.add_argument("--light", help="light base-model id (default: the config's cascade.light)")
    train.add_argument("--heavy", help="heavy base-model id (default: the config's cascade.heavy)")
    train.add_argument("--init", help="discriminator id to start from, or 'fresh' for random "
                       "weights (default: the config's cascade.discriminator when its folder "
                       "exists, else fresh)")
    train.add_argument("--n-prompts", type=int, default=200, help="prompts drawn from the file "
                       "by --seed (default: %(default)s)")
    train.add_argument("--holdout", type=float, default=0.2, help="share of prompts held out "
                       "for the accuracy (default: %(default)s)")
    train.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    train.add_argument("--steps", type=int, help="inference steps for both models (default: each "
                       "model's default_steps)")
    train.add_argument("--size", help="image size WxH (default: the light model's first size)")
    train.add_argument("--seed", type=int, default=0, help="prompt draw, split, image seeds and "
                       "weights (default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: "
                       "%(default)s)")
    train.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, "
                       "cuda:N (default: %(default)s)")
    train.add_argument("--out", help="output folder (default: MODEL_ROOT/discriminator/"
                       "LIGHT-vs-HEAVY)")
    train.add_argument("--force", action="store_true", help="replace --out if it exists")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_discriminator_train)

    sub.add_parser("trace", add_help=False, help="trace tooling (see `t2i trace --help`)")
    sub.add_parser("simulate", add_help=False, help="cluster simulator (see `t2i simulate --help`)")
    sub.add_parser("profile", add_help=False, help="measure a running service into a simulator "
                   "profile (see `t2i profile --help`)")
    sub.add_parser("replay", add_help=False, help="replay a trace against the live service "
                   "(see `t2i replay --help`)")
    sub.add_parser("parity", add_help=False, help="the same trace slice live and simulated, side "
                   "by side (see `t2i parity --help`)")
    sub.add_parser("compare", add_help=False, help="two replays of the same slice, paired: ratios with "
                   "95%% bootstrap intervals (see `t2i compare --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "trace":
        from trace_replay.cli import main as trace_main

        return trace_main(argv[1:])
    if argv and argv[0] == "simulate":
        from trace_replay.simulator.cli import main as simulate_main

        return simulate_main(argv[1:])
    if argv and argv[0] == "replay":
        from trace_replay.replay.cli import main as replay_main

        return replay_main(argv[1:])
    if argv and argv[0] == "parity":
        from trace_replay.replay.parity_cli import main as parity_main

        return parity_main(argv[1:])
    if argv and argv[0] == "compare":
        from trace_replay.replay.compare import main as compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "profile":
        from trace_replay.profile import main as profile_main

        return profile_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
