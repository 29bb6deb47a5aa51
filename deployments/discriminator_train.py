"""Train the cascade's discriminator on light- and heavy-model images of the same prompts.

As DiffServe (arXiv 2411.15381) does, an image is labelled by which model made it: heavy = 1,
light = 0. Trained that way, the score of a light image says how much it looks like the heavy
model's work, which is what the cascade thresholds. Images come from the service's own
`PipelineEngine` (the same loading and generation code a BaseModel replica runs), one pipeline
loaded at a time. Prompts are split into training and held-out sets by prompt, so the two images
of one prompt never sit on both sides. The result is saved as config.json + model.safetensors
(what `ImageDiscriminator.load` reads) through a staging folder renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deployments.config import MODEL_ID_PATTERN, ServeConfig, parse_size
from deployments.discriminator_model import DiscriminatorConfig, ImageDiscriminator
from deployments.pipeline_engine import PipelineEngine
from deployments.spec import GenerationSpec

LIGHT, HEAVY = 0, 1


class TrainError(ValueError):
    """Input the trainer cannot use; the message names the option or file that is wrong."""


@dataclass(frozen=True)
class TrainSettings:
    light: str
    heavy: str
    init: str | None = None  # discriminator id to fine-tune; None: fresh random weights
    n_prompts: int = 200
    holdout: float = 0.2
    epochs: int = 10
    steps: int | None = None  # None: each model's default_steps
    size: str | None = None  # 'WxH'; None: the light model's default size
    seed: int = 0
    batch_size: int = 32
    lr: float = 3e-3
    device: str = "cpu"


@dataclass
class Pairs:
    """Generated images (uint8 N x H x W x 3), their labels and the prompt each came from."""

    images: np.ndarray
    labels: np.ndarray
    prompt_index: np.ndarray


@dataclass
class TrainReport:
    settings: TrainSettings
    prompts_total: int
    train_prompts: int
    holdout_prompts: int
    steps: dict[str, int]
    size: str
    epochs: list[dict] = field(default_factory=list)  # per epoch: loss, accuracy
    holdout_accuracy: float = float("nan")
    holdout_light_accepted: float = float("nan")  # share of held-out light images >= threshold
    threshold: float = 0.5
    generate_s: float = 0.0
    train_s: float = 0.0

    def as_json(self) -> dict:
        return {**asdict(self), "settings": asdict(self.settings)}

    def summary(self) -> str:
        held_images = 2 * self.holdout_prompts
        return (f"held-out accuracy {self.holdout_accuracy:.3f} on {held_images} images "
                f"({self.holdout_prompts} prompts; chance is 0.5); held-out light images scoring "
                f">= cascade.threshold {self.threshold}: {self.holdout_light_accepted:.1%}; "
                f"generation {self.generate_s} s, training {self.train_s} s")


# -- checks, run before anything slow ----------------------------------------------------------
def check_settings(config: ServeConfig, s: TrainSettings) -> None:
    """Raise TrainError naming the option when the settings cannot train anything."""
    for option, model_id in (("--light", s.light), ("--heavy", s.heavy)):
        _check_kind(config, option, model_id, "base")
    if s.light == s.heavy:
        raise TrainError(f"--light and --heavy are both {s.light!r}: the labels would say nothing")
    if s.init is not None:
        _check_kind(config, "--init", s.init, "discriminator")
    if not 0.0 < s.holdout < 1.0:
        raise TrainError(f"--holdout {s.holdout}: must be between 0 and 1 (exclusive)")
    for option, value in (("--n-prompts", s.n_prompts), ("--epochs", s.epochs),
                          ("--batch-size", s.batch_size), ("--steps", s.steps)):
        if value is not None and value < 1:
            raise TrainError(f"{option} {value}: must be at least 1")
    if s.size is not None:
        try:
            parse_size(s.size)
        except ValueError as exc:
            raise TrainError(f"--size: {exc}") from None


def _check_kind(config: ServeConfig, option: str, model_id: str, kind: str) -> None:
    try:
        entry = config.entry(model_id)
    except KeyError:
        raise TrainError(f"{option} {model_id!r}: no such model in the config; "
                         f"{config.valid_ids_hint(kind)}") from None
    if entry.kind != kind:
        raise TrainError(f"{option} {model_id!r} is a {entry.kind}, not a {kind} model; "
                         f"{config.valid_ids_hint(kind)}")
    if entry.path and not Path(config.resolve_source(entry)).exists():
        raise TrainError(f"{option} {model_id!r}: its folder {config.resolve_source(entry)} does "
                         "not exist (build the demo models with `t2i demo-models`, or fix the "
                         "config's model_root or path)")


def read_prompts(path: Path, n: int, seed: int) -> tuple[list[str], int]:
    """`n` non-empty lines of `path`, drawn without replacement by `seed` and kept in file order
    (all of them when the file has fewer); also returns how many the file holds."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise TrainError(f"--prompts {str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainError(f"--prompts {str(path)!r}: cannot be read ({exc})") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise TrainError(f"--prompts {str(path)!r}: holds no prompts (one per line)")
    if len(prompts) <= n:
        return prompts, len(prompts)
    chosen = np.sort(np.random.default_rng(seed).choice(len(prompts), size=n, replace=False))
    return [prompts[i] for i in chosen], len(prompts)


def split_prompts(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt indices (train, held out); TrainError unless both sides get at least one."""
    n_held = int(round(n * holdout))
    if n_held < 1 or n - n_held < 1:
        raise TrainError(f"{n} prompts with --holdout {holdout} leave {n - n_held} to train on and "
                         f"{n_held} held out; each needs at least 1 (raise --n-prompts)")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def check_out(out: Path, force: bool) -> None:
    """Fail now, not after training, when `out` cannot be written (or exists without --force)."""
    if out.exists() and not force:
        raise TrainError(f"--out {str(out)!r} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {str(out)!r} exists and is not a folder")
    try:  # the real test of writability (os.access says yes to root on a read-only mount)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent))
    except OSError as exc:
        raise TrainError(f"--out {str(out)!r}: cannot write there ({exc.strerror or exc})") from None


# -- images ----------------------------------------------------------------------------------
def generate_pairs(engine: PipelineEngine, s: TrainSettings, prompts: list[str],
                   progress: bool = False) -> tuple[Pairs, dict[str, int], str]:
    """One light and one heavy image per prompt, with the same per-prompt seed (as a cascade
    request would be answered by either). Returns the pairs, the steps each model ran and the
    size. One pipeline is loaded at a time, so a GPU needs room for the larger one only."""
    config = engine.config
    size = s.size or config.entry(s.light).sizes[0]
    width, height = parse_size(size)
    steps = {m: s.steps or config.entry(m).default_steps for m in (s.light, s.heavy)}
    images: list[np.ndarray] = []
    with tqdm(total=2 * len(prompts), desc="generating", unit="img", disable=not progress,
              leave=False, dynamic_ncols=True, mininterval=0.5) as bar:
        for model_id in (s.light, s.heavy):
            entry = config.entry(model_id)
            loaded = engine.load_pipeline(model_id)
            for i, prompt in enumerate(prompts):
                spec = GenerationSpec(prompt=prompt, base_model=model_id, width=width,
                                      height=height, steps=steps[model_id],
                                      guidance_scale=entry.default_guidance_scale, seed=s.seed + i)
                images.append(engine.generate(loaded, spec).images[0])
                bar.update(1)
            del loaded  # frees the weights before the next model loads
    n = len(prompts)
    pairs = Pairs(np.stack(images), np.array([LIGHT] * n + [HEAVY] * n, np.float32),
                  np.concatenate([np.arange(n), np.arange(n)]))
    return pairs, steps, size


# -- training --------------------------------------------------------------------------------
def initial_model(config: ServeConfig, init: str | None, seed: int) -> ImageDiscriminator:
    """The registered discriminator `init` (through `ImageDiscriminator.load`, as the deployment
    loads it), or fresh weights from `seed` with the default architecture."""
    if init is None:
        torch.manual_seed(seed)
        return ImageDiscriminator(DiscriminatorConfig())
    try:
        return ImageDiscriminator.load(config.resolve_source(config.entry(init)))
    except ValueError as exc:
        raise TrainError(f"--init {init!r}: {exc}") from None


def _batch(images: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0


def fit(model: ImageDiscriminator, images: np.ndarray, labels: np.ndarray, epochs: int,
        batch_size: int, lr: float, seed: int, device: str, progress: bool = False,
        on_epoch: Callable[[int, float, float], None] | None = None) -> list[dict]:
    """Adam on binary cross-entropy; returns each epoch's mean loss and accuracy (at 0.5)."""
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    target = torch.from_numpy(labels).to(device)
    order_rng = torch.Generator().manual_seed(seed)
    batches = -(-len(images) // batch_size)
    history = []
    with tqdm(total=epochs * batches, desc="training", unit="batch", disable=not progress,
              leave=False, dynamic_ncols=True, mininterval=0.5) as bar:
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(images), generator=order_rng).numpy()
            loss_sum, correct = 0.0, 0
            for start in range(0, len(images), batch_size):
                idx = order[start:start + batch_size]
                scores = model(_batch(images[idx], device))
                loss = torch.nn.functional.binary_cross_entropy(scores, target[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                loss_sum += loss.item() * len(idx)
                correct += int(((scores >= 0.5).float() == target[idx]).sum())
                bar.update(1)
            history.append({"epoch": epoch, "loss": loss_sum / len(images),
                            "accuracy": correct / len(images)})
            if on_epoch is not None:
                on_epoch(epoch, history[-1]["loss"], history[-1]["accuracy"])
    return history


@torch.no_grad()
def predict(model: ImageDiscriminator, images: np.ndarray, device: str,
            batch_size: int = 64) -> np.ndarray:
    """Scores in [0, 1] (higher: more heavy-like) for uint8 N x H x W x 3 images."""
    model.to(device).eval()
    return np.concatenate([model(_batch(images[i:i + batch_size], device)).cpu().numpy()
                           for i in range(0, len(images), batch_size)])


# -- saving ----------------------------------------------------------------------------------
def save_atomically(model: ImageDiscriminator, out: Path, report: dict) -> None:
    """Write config.json, model.safetensors and training.json to a staging folder beside `out`,
    check it loads, then rename it to `out` (replacing an existing one): a crash at any point
    leaves either no `out` or a whole one, never a half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        model.to("cpu").save(staging)
        (staging / "training.json").write_text(json.dumps(report, indent=2))
        ImageDiscriminator.load(staging)  # what the deployment will do; fail before publishing
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide it from other users
        for path in [*staging.iterdir(), staging]:  # on disk before the rename makes it visible
            _fsync(path)
        if out.exists():
            old = out.parent / f".{out.name}.{os.getpid()}.old"
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_id_for(out: Path) -> str:
    """A registry id from the output folder's name (invalid characters become '-')."""
    candidate = re.sub(r"[^A-Za-z0-9._-]", "-", out.name).lstrip("._-")[:64] or "discriminator"
    assert re.match(MODEL_ID_PATTERN, candidate)
    return candidate


def config_snippet(config: ServeConfig, out: Path) -> str:
    """YAML registering the saved discriminator (path relative to model_root when under it)."""
    root = Path(config.model_root).resolve()
    resolved = out.resolve()
    path = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
    model_id = model_id_for(out)
    return (f"models:\n  - {{id: {model_id}, kind: discriminator, path: {path}}}\n"
            f"cascade:\n  discriminator: {model_id}\n")


# -- the whole run ---------------------------------------------------------------------------
def train_discriminator(config: ServeConfig, s: TrainSettings, prompts: list[str], out: Path,
                        force: bool = False, progress: bool = False,
                        log: Callable[[str], None] = tqdm.write) -> TrainReport:
    """Check everything, generate the pairs, train, evaluate on the held-out prompts, save."""
    check_settings(config, s)
    check_out(out, force)
    train_idx, held_idx = split_prompts(len(prompts), s.holdout, s.seed)
    model = initial_model(config, s.init, s.seed)
    started = time.perf_counter()
    pairs, steps, size = generate_pairs(PipelineEngine(config, device=s.device), s, prompts, progress)
    report = TrainReport(s, len(prompts), len(train_idx), len(held_idx), steps, size,
                         threshold=config.cascade.threshold,
                         generate_s=round(time.perf_counter() - started, 2))
    log(f"generated {len(pairs.images)} images ({s.light}: {steps[s.light]} steps, {s.heavy}: "
        f"{steps[s.heavy]} steps, {size}) in {report.generate_s} s")
    train = np.isin(pairs.prompt_index, train_idx)
    started = time.perf_counter()
    report.epochs = fit(
        model, pairs.images[train], pairs.labels[train], s.epochs, s.batch_size, s.lr, s.seed,
        s.device, progress, lambda e, loss, acc: log(
            f"epoch {e}/{s.epochs}: train loss {loss:.4f}, train accuracy {acc:.3f}"))
    report.train_s = round(time.perf_counter() - started, 2)
    scores = predict(model, pairs.images[~train], s.device)
    labels = pairs.labels[~train]
    report.holdout_accuracy = float(((scores >= 0.5) == (labels == HEAVY)).mean())
    report.holdout_light_accepted = float((scores[labels == LIGHT] >= report.threshold).mean())
    save_atomically(model, out, report.as_json())
    return report
