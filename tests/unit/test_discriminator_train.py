"""`t2i discriminator train` on the tiny demo models: the saved model loads and scores through the
Discriminator deployment, held-out accuracy beats chance (and labels that say nothing about the
model do not), bad input stops with exit code 2 naming what is wrong, saving is all or nothing."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from app.cli import main
from app.demo_models import HEAVY_ID, LIGHT_ID
from deployments.config import ServeConfig
from deployments.discriminator import Discriminator
from deployments.discriminator_model import DiscriminatorConfig, ImageDiscriminator
from deployments.discriminator_train import (Pairs, TrainSettings, fit, generate_pairs,
                                             initial_model, predict, read_prompts,
                                             save_atomically, split_prompts)
from deployments.pipeline_engine import PipelineEngine
from tests.conftest import DEFAULT_CONFIG

# 16x16 keeps a tiny-model image near 0.1 s on a CPU; the light and heavy demo models still
# differ there (their colour balance), which is what the discriminator has to find.
SIZE = "16x16"
N_PROMPTS = 16


def _prompts(n: int) -> list[str]:
    subjects = ("a lighthouse", "a red fox", "an old tram", "a glass teapot", "a mountain lake",
                "a robot gardener", "a paper boat", "a desert city")
    styles = ("at dawn, oil painting", "in fog, photograph", "neon lit, digital art",
              "in winter, watercolour")
    return [f"{s} {t}" for s, t in itertools.islice(itertools.product(subjects, styles), n)]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(_prompts(N_PROMPTS)) + "\n\n")  # a blank line is skipped
    return path


@pytest.fixture(scope="module")
def pairs(demo_config) -> Pairs:
    """One light and one heavy image for each of 16 prompts, through the real engine."""
    settings = TrainSettings(light=LIGHT_ID, heavy=HEAVY_ID, size=SIZE, seed=0)
    pairs, steps, size = generate_pairs(PipelineEngine(demo_config, device="cpu"), settings,
                                        _prompts(N_PROMPTS))
    assert steps == {LIGHT_ID: 2, HEAVY_ID: 4} and size == SIZE  # each model's default_steps
    return pairs


def _cli(demo_dir: Path, *args: str) -> int:
    return main(["discriminator", "train", "--model-root", str(demo_dir), "--quiet",
                 "--size", SIZE, *args])


def test_trains_end_to_end_and_the_discriminator_deployment_loads_it(demo_dir, prompts_file,
                                                                     tmp_path, capsys):
    out = tmp_path / "disc-light-vs-heavy"
    assert _cli(demo_dir, "--prompts", str(prompts_file), "--n-prompts", "4", "--holdout", "0.5",
                "--epochs", "2", "--steps", "1", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2: train loss" in printed and "held-out accuracy" in printed
    assert "init tiny-disc" in printed  # fine-tunes the config's cascade.discriminator
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                     "training.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    # The printed snippet, added to the config, serves the new model through the deployment.
    snippet = yaml.safe_load(printed[printed.index("models:"):])
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["model_root"] = str(demo_dir)
    raw["models"] += snippet["models"]
    raw["cascade"].update(snippet["cascade"])
    deployment = Discriminator(ServeConfig.model_validate(raw))
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    scores = asyncio.run(deployment.score([image, image]))
    assert asyncio.run(deployment.ready()) == {"loaded": ["disc-light-vs-heavy"]}
    assert len(scores) == 2 and 0.0 <= scores[0] <= 1.0 and scores[0] == scores[1]


def _heldout_accuracy(config, pairs: Pairs, labels: np.ndarray, seed: int) -> float:
    train_idx, _ = split_prompts(N_PROMPTS, 0.5, seed)
    train = np.isin(pairs.prompt_index, train_idx)
    model = initial_model(config, None, seed)
    fit(model, pairs.images[train], labels[train], epochs=30, batch_size=8, lr=1e-2, seed=seed,
        device="cpu")
    scores = predict(model, pairs.images[~train], "cpu")
    # the deployment's own scoring path gives the same numbers
    assert np.allclose(model.score(list(pairs.images[~train][:2])), scores[:2], atol=1e-5)
    return float(((scores >= 0.5) == (pairs.labels[~train] == 1)).mean())


def test_heldout_accuracy_beats_chance(demo_config, pairs):
    # 8 held-out prompts, 16 images: at most 2 wrong
    assert _heldout_accuracy(demo_config, pairs, pairs.labels, seed=0) >= 0.875


def test_labels_that_say_nothing_about_the_model_stay_near_chance(demo_config, pairs):
    # Both images of a prompt get the same random label: the label then carries no sign of which
    # model made an image, so what the discriminator learns above must come from the models.
    coin = np.random.default_rng(0).integers(0, 2, N_PROMPTS).astype(np.float32)
    assert _heldout_accuracy(demo_config, pairs, coin[pairs.prompt_index], seed=0) <= 0.75


@pytest.mark.parametrize("args, expected", [
    (["--prompts", "/nonexistent/prompts.txt"], "--prompts '/nonexistent/prompts.txt': no such file"),
    (["--light", "sd-nope"], "--light 'sd-nope': no such model"),
    (["--heavy", "tiny-cn-canny"], "--heavy 'tiny-cn-canny' is a controlnet, not a base model"),
    (["--heavy", LIGHT_ID], "--light and --heavy are both"),
    (["--init", LIGHT_ID], "--init 'tiny-sd-light' is a base, not a discriminator model"),
    (["--n-prompts", "2"], "2 prompts with --holdout 0.2 leave 2 to train on and 0 held out"),
    (["--holdout", "1.0"], "--holdout 1.0: must be between 0 and 1"),
    (["--size", "15x15"], "--size: size '15x15'"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
])
def test_bad_input_stops_naming_what_is_wrong(demo_dir, prompts_file, tmp_path, capsys, args,
                                              expected):
    args = ["--prompts", str(prompts_file), *args] if "--prompts" not in args else args
    assert _cli(demo_dir, *args, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2i discriminator train: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_out_that_cannot_be_written_or_exists_stops_before_generating(demo_dir, prompts_file,
                                                                      tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _cli(demo_dir, "--prompts", str(prompts_file), "--out", str(blocker / "disc")) == 2
    assert "cannot write there" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    assert _cli(demo_dir, "--prompts", str(prompts_file), "--out", str(existing)) == 2
    assert "already exists; pass --force" in capsys.readouterr().err


def test_a_missing_model_folder_says_how_to_build_it(prompts_file, tmp_path, capsys):
    assert main(["discriminator", "train", "--model-root", str(tmp_path / "empty"), "--prompts",
                 str(prompts_file), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist (build the demo models with `t2i demo-models`" in capsys.readouterr().err


def test_a_crash_while_saving_leaves_no_model(tmp_path, monkeypatch):
    def half_save(self, folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    net = ImageDiscriminator(DiscriminatorConfig())
    monkeypatch.setattr(ImageDiscriminator, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomically(net, tmp_path / "disc", {})
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_whole_model(tmp_path):
    out = tmp_path / "disc"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    save_atomically(ImageDiscriminator(DiscriminatorConfig()), out, {"run": 2})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                     "training.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["disc"]
    assert out.stat().st_mode & 0o755 == 0o755  # readable by others, as a plain mkdir makes it
    ImageDiscriminator.load(out)


def test_prompts_are_drawn_by_seed_and_split_by_prompt(prompts_file):
    every, available = read_prompts(prompts_file, 100, seed=0)
    assert len(every) == available == N_PROMPTS  # fewer in the file: all of them
    drawn, _ = read_prompts(prompts_file, 5, seed=1)
    assert drawn == read_prompts(prompts_file, 5, seed=1)[0] and len(set(drawn)) == 5
    assert drawn == [p for p in every if p in drawn]  # file order kept
    train, held = split_prompts(10, 0.2, seed=0)
    assert len(held) == 2 and sorted([*train, *held]) == list(range(10))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(demo_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "disc-cuda"
    assert _cli(demo_dir, "--prompts", str(prompts_file), "--n-prompts", "4", "--holdout", "0.5",
                "--epochs", "2", "--device", "cuda", "--out", str(out)) == 0
    assert "device cuda" in capsys.readouterr().out
    ImageDiscriminator.load(out)
