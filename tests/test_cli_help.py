"""The CLI explains itself (issue 25): `latentdiff config` lists every key with its value and meaning,
`--set` typos get the nearest key, sampling flags are checked before any model is loaded, progress
fits the work (a time-budget bar, a stop-reason line, per-step sampling, the fitted-grid search),
`latentdiff samplers` lists every sampler and spacing, and every flag has help with its default."""

from __future__ import annotations

import argparse
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import latentdiff.io.checkpoint
import latentdiff.pipelines
import latentdiff.pipelines.controlnet
from latentdiff.cli.checks import prompt_rows
from latentdiff.cli.main import build_parser, main
from latentdiff.config import apply_overrides, describe_keys
from latentdiff.presets import PRESETS, get_preset
from latentdiff.progress import TrainBar
from latentdiff.sampling import SAMPLERS, get_sampler
from latentdiff.sampling.fitted import fit_sigmas
from latentdiff.schedules import SPACINGS

from clirun import run_cli


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    return run_cli(capsys, argv)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    main(["train", "--preset", "tiny", "--out", str(out), "--set", "train.max_steps=2", "train.sample_every=100"])
    return out / "checkpoint"


# ---------------------------------------------------------------- config listing and --set suggestions


def test_every_key_of_every_preset_has_a_description():
    for name in PRESETS:
        for key, _, text in describe_keys(get_preset(name)):
            assert text.strip(), f"{name}: {key} has no description"


def test_config_lists_every_key_with_value_and_description(capsys):
    code, out, _ = cli(capsys, ["config", "tiny", "--set", "train.lr=0.5", "model.channel_mult=[1,4]"])
    assert code == 0
    lines = out.splitlines()
    keys = [key for key, _, _ in describe_keys(get_preset("tiny"))]
    assert [line.split(" = ")[0] for line in lines] == keys
    shown = {line.split(" = ")[0]: line for line in lines}
    assert shown["train.lr"].startswith("train.lr = 0.5 ") and "# peak learning rate" in shown["train.lr"]
    assert shown["model.channel_mult"].startswith("model.channel_mult = [1, 4] ")
    assert all("  # " in line for line in lines)


@pytest.mark.parametrize("override, nearest", [("train.lrr=1", "train.lr"), ("model.chanels=3", "model.channels"),
                                               ("trian.lr=1", "train"), ("lr=1", "train.lr"),
                                               ("sample.sampelr=ddim", "sample.sampler")])
def test_unknown_keys_suggest_the_nearest(override, nearest, capsys):
    with pytest.raises(KeyError, match=f"did you mean '{nearest}'"):
        apply_overrides(get_preset("tiny"), [override])
    code, _, err = cli(capsys, ["config", "tiny", "--set", override])
    assert code == 1 and err.strip().splitlines()[-1].startswith("latentdiff config: override")
    assert f"did you mean '{nearest}'?" in err and "valid here:" in err


def test_type_validation_is_kept(capsys):
    code, _, err = cli(capsys, ["config", "tiny", "--set", "train.lr=abc"])
    assert code == 1 and "train.lr" in err and "abc" in err


# ---------------------------------------------------------------- sampling flags checked up front


SAMPLE_REFUSALS = [
    (["--n", "0"], "--n must be at least 1, got 0"),
    (["--n", "-1"], "--n must be at least 1, got -1"),
    (["--nrow", "-2"], "--nrow must be at least 1, got -2"),
    (["--nrow", "0"], "--nrow must be at least 1, got 0"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "-3"], "--steps must be at least 1, got -3"),
    (["--guidance", "nan"], "--guidance must be a finite number >= 0 (1 = no guidance), got nan"),
    (["--guidance", "inf"], "--guidance must be a finite number >= 0 (1 = no guidance), got inf"),
    (["--guidance", "-5"], "--guidance must be a finite number >= 0 (1 = no guidance), got -5.0"),
    (["--percentile", "0"], "--percentile must be in (0, 1], got 0.0"),
    (["--percentile", "1.5"], "--percentile must be in (0, 1], got 1.5"),
    (["--sampler", "ddimm"], "--sampler 'ddimm' is not a sampler; valid:"),
    (["--spacing", "karas"], "--spacing 'karas' is not a spacing; valid:"),
    (["--control-start", "0.8", "--control-end", "0.2"], "--control-start and --control-end must satisfy"),
]


@pytest.fixture
def no_model(monkeypatch):
    """Loading anything fails the test: the checks must come first."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    for module, name in [(latentdiff.pipelines, "load_model"), (latentdiff.pipelines, "load_controlled"),
                         (latentdiff.pipelines, "load_autoencoder"), (latentdiff.pipelines.controlnet, "base_of"),
                         (latentdiff.io.checkpoint, "read_config")]:
        monkeypatch.setattr(module, name, loaded)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("flags, message", SAMPLE_REFUSALS)
def test_sample_refuses_bad_flags_before_loading(flags, message, capsys, tiny_ckpt, tmp_path, no_model):
    out = tmp_path / "new" / "grid.png"
    code, stdout, err = cli(capsys, ["sample", str(tiny_ckpt), "--out", str(out), *flags])
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"latentdiff sample: {message}"), err
    assert _files(tmp_path) == [] and stdout == ""


def test_sample_out_must_be_a_writable_file(capsys, tiny_ckpt, tmp_path, no_model):
    code, _, err = cli(capsys, ["sample", str(tiny_ckpt), "--out", str(tmp_path)])
    assert code == 1 and f"latentdiff sample: --out {tmp_path} is a folder: give a file name" in err
    (tmp_path / "afile").write_text("x")
    code, _, err = cli(capsys, ["sample", str(tiny_ckpt), "--out", str(tmp_path / "afile" / "g.png")])
    assert code == 1 and "latentdiff sample: --out" in err and "is a file, so the folder cannot be created" in err
    code, _, err = cli(capsys, ["sample", str(tiny_ckpt), "--out", "x.png", "--trajectory", str(tmp_path)])
    assert code == 1 and "--trajectory" in err and "is a folder" in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = cli(capsys, ["sample", str(tiny_ckpt), "--out", str(locked / "g.png")])
        assert code == 1 and "is not writable" in err
    assert _files(tmp_path) in (["afile"], ["afile", "locked"])


@pytest.mark.parametrize("flags, message", [(["--n", "0"], "--n must be at least 1, got 0"),
                                            (["--steps", "0"], "--steps must be at least 1, got 0"),
                                            (["--guidance", "nan"], "--guidance must be a finite number"),
                                            (["--n-per-prompt", "0"], "--n-per-prompt must be at least 1")])
def test_eval_refuses_bad_flags_before_loading(flags, message, capsys, tiny_ckpt, tmp_path, no_model):
    code, _, err = cli(capsys, ["eval", str(tiny_ckpt), "--json", str(tmp_path / "e.json"), *flags])
    assert code == 1 and f"latentdiff eval: {message}" in err
    code, _, err = cli(capsys, ["eval", str(tiny_ckpt), "--json", str(tmp_path)])
    assert code == 1 and "latentdiff eval: --json" in err and "is a folder" in err
    assert _files(tmp_path) == []


def test_prompt_rows_give_exactly_n_images():
    prompts = [f"p{i}" for i in range(10)]
    for n in (1, 7, 8, 10, 13, 20, 64, 100):
        rows = prompt_rows(prompts, n)
        assert n % len(rows) == 0 and len(rows) <= 10 and rows == prompts[:len(rows)]
    assert len(prompt_rows(prompts, 8)) == 8 and len(prompt_rows(prompts, 64)) == 8
    assert len(prompt_rows(prompts, 13)) == 1 and len(prompt_rows(prompts, 30)) == 10


# ---------------------------------------------------------------- progress


def test_budget_bar_total_is_the_budget_and_the_run_says_why_it_stopped(capsys, tmp_path):
    cfg = SimpleNamespace(max_steps=1000, max_minutes=2.0)
    bar = TrainBar(cfg, step=10, elapsed_s=30.0)
    assert bar.bar.total == 120.0 and bar.bar.n == 30.0
    bar.update(11, 45.0, 0.5)
    assert bar.bar.n == 45.0 and "0.8/2 min, 1.2 min left, step 11/1000" in bar.bar.desc and "steps/s" in bar.bar.desc
    bar.update(12, 130.0, 0.5)
    assert bar.bar.n == bar.bar.total  # the bar ends full when the budget is spent
    bar.close()
    assert "time budget reached (2 min) at step 12" in bar.stopped(12, 130.0, None)
    assert "max_steps reached (1000)" in TrainBar(cfg, 1000, 60.0, disable=True).stopped(1000, 60.0, None)
    assert "stopped by SIGINT" in TrainBar(cfg, 5, 1.0, disable=True).stopped(5, 1.0, signal.SIGINT)
    assert "stopped by SIGTERM" in TrainBar(cfg, 5, 1.0, disable=True).stopped(5, 1.0, signal.SIGTERM)
    steps_bar = TrainBar(SimpleNamespace(max_steps=50, max_minutes=None), step=0, elapsed_s=0.0, disable=True)
    assert steps_bar.bar.total == 50

    # through the CLI: a real run with a budget of 0.6 s, then one that stops at max_steps
    code, out, err = cli(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "a"), "--minutes", "0.01",
                                  "--set", "train.max_steps=100000", "train.sample_every=100000",
                                  "train.checkpoint_every=100000"])
    assert code == 0, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert any("/0.01 min" in line and "min left" in line and "steps/s" in line for line in lines), err[-2000:]
    assert lines[-2].startswith("train: 100%|")  # the bar's total is the budget (not 100000 steps), spent
    assert "train: time budget reached (0.01 min) at step" in lines[-1]
    code, out, err = cli(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "b"),
                                  "--set", "train.max_steps=3", "train.sample_every=100"])
    assert code == 0 and "train: max_steps reached (3) at step 3" in err.strip().splitlines()[-1]


def test_small_sampling_counts_sampler_steps(capsys, tiny_ckpt, tmp_path):
    code, out, err = cli(capsys, ["sample", str(tiny_ckpt), "--n", "2", "--steps", "5", "--sampler", "ddim",
                                  "--out", str(tmp_path / "g.png")])
    assert code == 0 and "(2 images)" in out
    final = [line for line in err.replace("\r", "\n").splitlines() if "sample 2 x ddim-5" in line][-1]
    assert "5/5" in final and "step" in final, err


def test_text_sample_without_prompt_writes_exactly_n(capsys, tmp_path):
    ckpt = tmp_path / "t2i"
    main(["train", "--preset", "tiny-t2i", "--out", str(ckpt), "--set", "train.max_steps=1", "train.sample_every=100"])
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    code, out, err = cli(capsys, ["sample", str(ckpt / "checkpoint"), "--n", "8", "--steps", "1",
                                  "--out", str(tmp_path / "t.png")])
    assert code == 0, err
    assert "(8 images)" in out  # was 10: one per grid prompt
    assert not hf_logging.is_progress_bar_enabled()  # silenced where the text encoder loads
    assert "Loading weights" not in err


def test_fitted_search_shows_progress(capsys):
    sigmas = {sp: torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0], dtype=torch.float64) for sp in ("a", "b")}
    sigmas["b"] = torch.tensor([10.0, 5.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * math.sqrt(101)

    def denoise(x, sigma, cond=None):  # the exact denoiser of N(0, I) data; sigma (B,)
        return x / (1 + sigma.view(-1, 1) ** 2)

    x_ref = x_T / math.sqrt(101)
    capsys.readouterr()
    fit_sigmas(get_sampler("ddim"), denoise, x_T, x_ref, sigmas, sigma_min=0.05, max_evals=6, progress=True)
    err = capsys.readouterr().err
    assert "fit sigma grid" in err and "/14" in err and "rmse=" in err


# ---------------------------------------------------------------- samplers listing and help


def test_samplers_lists_every_sampler_and_spacing(capsys):
    code, out, _ = cli(capsys, ["samplers"])
    assert code == 0
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.startswith("  ")}
    assert set(rows) == set(SAMPLERS) | set(SPACINGS) | {"fitted"}
    assert all(len(text) > 15 for text in rows.values()), rows
    assert rows["ddim_eta1"].endswith("[eta=1.0]") and "DDIM" in rows["ddim"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    assert parser.description.endswith(".") and " " in parser.description and "``" not in parser.description
    for name, sub in _subparsers(parser).items():
        assert sub.description, name
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{flag} has no help"
            if action.option_strings and action.default not in (None, False):
                shown = sub._get_formatter()._get_help_string(action) % {"default": action.default}
                assert "default" in shown.lower(), f"{flag} hides its default {action.default!r}"
        assert "%(default)" not in text
    sample = _subparsers(parser)["sample"].format_help()
    assert "(default: 64)" in sample and "(default: samples.png)" in sample
    assert "see latentdiff.sampling.SAMPLERS" not in sample and "latentdiff samplers" in sample
