"""A tiny end-to-end run through the CLI: train -> resume -> sample -> eval, and CLI input errors."""

import json
import math

import pytest
from PIL import Image

from latentdiff.cli.main import main
from latentdiff.config import apply_overrides
from latentdiff.presets import PRESETS, RunConfig, get_preset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    main(["train", "--preset", "tiny", "--out", str(out), "--set", "train.max_steps=4"])
    return out


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.json", "metrics.jsonl", "loss.png", "checkpoint/config.json",
                 "checkpoint/model.safetensors", "checkpoint/ema.safetensors"):
        assert (run_dir / name).exists(), name
    assert RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())).train.max_steps == 4


def test_same_command_resumes(run_dir):
    main(["train", "--preset", "tiny", "--out", str(run_dir), "--set", "train.max_steps=6"])
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


def test_sample_writes_a_grid(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    main(["sample", str(run_dir / "checkpoint"), "--n", "20", "--sampler", "ddim", "--steps", "3",
          "--out", str(out)])
    assert Image.open(out).size[0] > 0


def test_sample_trajectory_strip_and_fitted_grid(run_dir, tmp_path):
    """--trajectory saves one row per sample and one column per step; --spacing fitted fits then samples."""
    out, strip = tmp_path / "grid.png", tmp_path / "traj.png"
    main(["sample", str(run_dir / "checkpoint"), "--n", "3", "--sampler", "unipc_bh3", "--steps", "4",
          "--spacing", "fitted", "--out", str(out), "--trajectory", str(strip)])
    assert Image.open(out).size[0] > 0
    assert Image.open(strip).size[0] > Image.open(strip).size[1]  # 4 steps across, 3 samples down


def test_step_count_below_the_order_is_an_error(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="needs at least 3 steps"):
        main(["sample", str(run_dir / "checkpoint"), "--n", "2", "--sampler", "unipc_bh3", "--steps", "2",
              "--out", str(tmp_path / "g.png")])


def test_eval_reports_numbers(run_dir, tmp_path):
    out = tmp_path / "eval.json"
    main(["eval", str(run_dir / "checkpoint"), "--n", "30", "--steps", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["n_eval"] == 30
    for key in ("fd_effnet", "fd_floor", "class_accuracy", "real_class_accuracy"):
        assert math.isfinite(report[key]), key
    assert report["real_class_accuracy"] > 0.85  # the cached classifier on real test images


def test_presets_build_and_round_trip():
    for name in PRESETS:
        cfg = get_preset(name)
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_overrides_and_their_errors():
    cfg = apply_overrides(get_preset("tiny"), ["train.lr=0.5", "model.channel_mult=[1,2,4]", "sample.sampler=ddim"])
    assert cfg.train.lr == 0.5 and cfg.model.channel_mult == (1, 2, 4) and cfg.sample.sampler == "ddim"
    with pytest.raises(KeyError, match="valid"):
        apply_overrides(cfg, ["train.nope=1"])
    with pytest.raises(SystemExit, match="fmnist-ddpm"):
        main(["train", "--preset", "nope", "--out", "x"])
