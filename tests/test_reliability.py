"""Fault injection on real tiny runs (issue 17): SIGKILL inside checkpoint saves, repeatable fresh runs,
divergence, resume rules, one writer per run folder, incomplete checkpoints, a full disk, one-line errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentdiff.cli.main import main
from latentdiff.io.checkpoint import load_checkpoint

from clirun import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train", "--preset", "tiny", "--set", "train.checkpoint_every=1", "train.max_steps=3",
        "train.sample_every=100", "sample.n_grid=10", "sample.steps=2"]


def train_args(out: Path, *extra: str) -> list[str]:
    return TINY[:3] + ["--out", str(out)] + TINY[3:] + list(extra)


def weights_digest(ckpt: Path) -> dict[str, str]:
    """sha256 of the weight files (trainer_state.pt holds the wall time, so it is left out)."""
    return {name: hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
            for name in ("model.safetensors", "ema.safetensors")}


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, stderr); ``capsys.stdout`` keeps its stdout."""
    code, capsys.stdout, err = run_cli(capsys, args)
    return code, err


def error_line(stderr: str) -> str:
    """The last line of stderr (tqdm's bar may precede it); it must say everything."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def child(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@contextlib.contextmanager
def one_thread():
    """Bitwise comparisons run with one thread, as the child processes do (OMP_NUM_THREADS=1):
    float sums split over another number of threads round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The weights of an uninterrupted run of the command every fault run repeats."""
    out = tmp_path_factory.mktemp("reference")
    with one_thread():
        main(train_args(out))
    return weights_digest(out / "checkpoint")


def test_two_fresh_runs_are_bitwise_equal(tmp_path, reference):
    with one_thread():
        main(train_args(tmp_path))
    assert weights_digest(tmp_path / "checkpoint") == reference


def test_two_fresh_autoencoder_runs_are_bitwise_equal(tmp_path):
    args = ["train", "--preset", "tiny-vae", "--set", "train.max_steps=2", "train.sample_every=100"]
    digests = []
    for name in ("a", "b"):
        main(args[:3] + ["--out", str(tmp_path / name)] + args[3:])
        digests.append(weights_digest(tmp_path / name / "checkpoint"))
    assert digests[0] == digests[1]


def test_sigkill_inside_saves_leaves_a_resumable_run(tmp_path, reference, capsys):
    """20 runs killed at random filesystem steps of their checkpoint saves (half of them with the file
    being written torn in half first): each leaves a loadable checkpoint or none, and resuming ends
    bitwise equal to the uninterrupted run. The killed runs go two at a time (one thread each)."""
    rng = random.Random(17)
    faults = [(rng.randint(1, 26), ("kill", "torn")[i % 2]) for i in range(20)]
    outs = [tmp_path / f"run{i}" for i in range(20)]
    procs: list[subprocess.Popen] = []
    for (k, kind), out in zip(faults, outs):
        if len(procs) >= 2:
            procs[-2].wait(timeout=300)
        procs.append(child([str(ROOT / "tests" / "fault_child.py"), str(k), kind, "--", *train_args(out)]))
    for proc, (k, kind) in zip(procs, faults):
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == -signal.SIGKILL, f"filesystem step {k} ({kind}) was not reached: {err[-2000:]}"
    for out, (k, kind) in zip(outs, faults):
        if (out / "checkpoint").exists() or (out / "checkpoint.old").exists():
            state = load_checkpoint(out / "checkpoint")  # complete: config, weights, EMA, trainer state
            assert state.trainer_state is not None and 1 <= state.trainer_state["step"] <= 3
        with one_thread():
            code, err = cli(train_args(out), capsys)
        assert code == 0, err
        assert weights_digest(out / "checkpoint") == reference, f"killed at filesystem step {k} ({kind})"


def test_divergence_keeps_the_previous_checkpoint_bytes(tmp_path, capsys):
    main(train_args(tmp_path))
    before = all_bytes(tmp_path / "checkpoint")
    code, err = cli(train_args(tmp_path, "train.lr=1e30", "train.max_steps=10", "train.warmup_steps=0"), capsys)
    line = error_line(err)
    assert code == 1
    assert line.startswith("latentdiff train: training diverged at step ") and "non-finite" in line, err
    assert f"kept the checkpoint of step 3 in {tmp_path / 'checkpoint'}" in line
    assert all_bytes(tmp_path / "checkpoint") == before
    state = load_checkpoint(tmp_path / "checkpoint")
    assert all(torch.isfinite(v).all() for v in state.model_state.values())


def test_unusable_learning_rate_is_one_line(tmp_path, capsys):
    code, err = cli(train_args(tmp_path, "train.lr=1e40"), capsys)
    assert code == 1 and err.strip() == "latentdiff train: train.lr must be a finite number > 0 (float32 range); got 1e+40"
    assert not tmp_path.joinpath("checkpoint").exists()


def test_skip_mode_drops_a_nonfinite_update_and_counts_it(tmp_path):
    from test_trainer import assert_identical, config, denoise_loss, run

    def one_bad_batch():
        calls = []

        def loss_fn(model, batch, generator):
            loss, logs = denoise_loss(model, batch, generator)
            calls.append(1)
            return (loss * float("nan"), logs) if len(calls) == 7 else (loss, logs)  # step 4's first micro-batch

        return loss_fn

    clean = run(tmp_path / "clean", config(max_steps=3))
    skipped = run(tmp_path / "skip4", config(max_steps=4, on_nonfinite="skip"), loss_fn=one_bad_batch())
    assert_identical(clean, skipped)  # step 4 changed neither the weights nor the EMA
    longer = run(tmp_path / "skip8", config(max_steps=8, on_nonfinite="skip"), loss_fn=one_bad_batch())
    assert longer.summary["skipped_steps"] == 1 and longer.step == 8
    state = load_checkpoint(tmp_path / "skip8" / "checkpoint")
    assert state.trainer_state["skipped_steps"] == 1
    records = [json.loads(line) for line in (tmp_path / "skip8" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_steps"] == 1 and all(r["loss"] == r["loss"] for r in records)  # no NaN logged


def test_changed_lr_on_resume_reaches_the_optimizer(tmp_path, capsys):
    main(train_args(tmp_path, "train.warmup_steps=0"))
    code, err = cli(train_args(tmp_path, "train.warmup_steps=0", "train.lr=0.0042", "train.max_steps=5"), capsys)
    assert code == 0, err
    assert "train.lr 0.001 -> 0.0042" in capsys.stdout
    state = load_checkpoint(tmp_path / "checkpoint")
    assert [g["lr"] for g in state.trainer_state["optimizer"]["param_groups"]] == [0.0042]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if r["step"] > 3] == [0.0042] * len([r for r in records if r["step"] > 3])
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 0.0042


def test_changed_architecture_on_resume_is_refused(tmp_path, capsys):
    main(train_args(tmp_path))
    before = all_bytes(tmp_path)
    code, err = cli(train_args(tmp_path, "model.channels=16"), capsys)
    assert code == 1
    assert "model.channels: checkpoint 8, command 16" in error_line(err), err
    assert all_bytes(tmp_path) == before  # config.json, metrics and checkpoint untouched


def test_second_writer_is_refused_until_the_first_dies(tmp_path, capsys):
    first = child(["-m", "latentdiff.cli.main", *train_args(tmp_path, "train.max_steps=100000")])
    try:
        deadline = time.time() + 120
        while not (tmp_path / "checkpoint").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        code, err = cli(train_args(tmp_path, "train.max_steps=100000"), capsys)
        assert code == 1
        assert f"is in use by PID {first.pid} on" in error_line(err), err
    finally:
        first.kill()
        first.wait()
    code, err = cli(train_args(tmp_path, "train.max_steps=100000", "train.max_minutes=0"), capsys)
    assert code == 0, err  # the kernel released the killed writer's lock


def test_checkpoint_without_trainer_state(tmp_path, capsys):
    main(train_args(tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoint"
    (ckpt / "trainer_state.pt").unlink()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    code, err = cli(train_args(tmp_path / "run"), capsys)
    assert code == 1 and "has no trainer state" in error_line(err) and "--init-from" in error_line(err), err
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics  # nothing erased
    code, err = cli(["sample", str(ckpt), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")], capsys)
    assert code == 0 and (tmp_path / "s.png").exists(), err
    code, err = cli(train_args(tmp_path / "new", "train.max_steps=0", "--init-from", str(ckpt)), capsys)
    assert code == 0, err
    start = load_checkpoint(tmp_path / "new" / "checkpoint")
    source = load_checkpoint(ckpt, trainer_state=False)
    assert start.trainer_state["step"] == 0
    assert all(torch.equal(start.model_state[k], source.ema_state[k]) for k in source.ema_state)


def test_damaged_files_are_named_in_one_line(tmp_path, capsys):
    main(train_args(tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoint"
    (ckpt / "trainer_state.pt").write_bytes(b"not a zip archive")
    code, err = cli(train_args(tmp_path / "run"), capsys)
    assert code == 1 and "trainer_state.pt is damaged" in error_line(err), err
    code, err = cli(["sample", str(ckpt), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")], capsys)
    assert code == 0, err  # sampling needs only the weights
    data = (ckpt / "ema.safetensors").read_bytes()
    (ckpt / "ema.safetensors").write_bytes(data[: len(data) // 2])
    code, err = cli(["sample", str(ckpt), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "ema.safetensors is not a complete safetensors file" in err, err


def _tmpfs(path: Path, size: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, capsys):
    """A real small tmpfs where the test runs as root; else an injected ENOSPC in the writer."""
    disk = tmp_path / "disk"
    mounted = os.geteuid() == 0 and _tmpfs(disk, "1200k")
    out = disk / "run" if mounted else tmp_path / "run"
    print(f"full disk by {'a 1200k tmpfs' if mounted else 'an injected ENOSPC'}")
    try:
        main(train_args(out, "train.max_steps=1"))
        before = all_bytes(out / "checkpoint")
        if mounted:
            filler = disk / "filler"
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            filler.write_bytes(b"\0" * max(free - 60_000, 0))  # room for metrics and the plot, not a checkpoint
            code, err = cli(train_args(out, "train.max_steps=3"), capsys)
        else:
            proc = child([str(ROOT / "tests" / "fault_child.py"), "2", "enospc", "--",
                          *train_args(out, "train.max_steps=3")])
            err = proc.communicate(timeout=300)[1]
            code = proc.returncode
        assert code == 1
        assert "no space left on device" in error_line(err) and "Traceback" not in err, err
        assert all_bytes(out / "checkpoint") == before
        assert not (out / "checkpoint.tmp").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    proc = child(["-m", "latentdiff.cli.main", *train_args(tmp_path, "train.max_steps=100000")])
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    line = error_line(err)
    assert line.startswith("latentdiff train: stopped by SIGINT at step ") and "run the same command again" in line
    assert "Traceback" not in err
    step = int(line.split("at step ")[1].split(";")[0])
    assert load_checkpoint(tmp_path / "checkpoint").trainer_state["step"] == step


def test_a_train_that_fails_before_writing_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new"
    code, err = cli(train_args(out, "data.root=" + str(tmp_path / "no-such-data")), capsys)
    assert code == 1 and "no-such-data" in error_line(err), err
    assert not out.exists()


def _folder(root: Path) -> Path:
    from PIL import Image

    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32, 32), tuple(c + 3 * i for c in colour)).save(root / label / f"{i}.png")
    return root


def test_rerunning_a_folder_run_without_its_flags_resumes_it(tmp_path, capsys):
    data, out = _folder(tmp_path / "imgs"), tmp_path / "run"
    small = ["train.batch_size=4", "train.sample_every=100", "sample.n_grid=4", "sample.steps=2"]
    code, err = cli(["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--set",
                     "train.max_steps=2", *small], capsys)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    code, err = cli(["train", "--out", str(out), "--set", "train.max_steps=3"], capsys)  # no preset, no --data
    assert code == 0, err
    code, err = cli(["train", "--preset", "tiny", "--out", str(out), "--set", "train.max_steps=4"], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == saved["data"] and config["model"] == saved["model"]  # still the folder, not fmnist
    assert load_checkpoint(out / "checkpoint").trainer_state["step"] == 4


def test_another_preset_over_a_run_is_refused_unless_forced(tmp_path, capsys):
    main(train_args(tmp_path))
    before = all_bytes(tmp_path)
    code, err = cli(["train", "--preset", "tiny-vae", "--out", str(tmp_path), "--set", "train.max_steps=1"], capsys)
    assert code == 1 and "holds a run of another preset" in error_line(err) and "--force" in error_line(err), err
    assert all_bytes(tmp_path) == before
    code, err = cli(["train", "--preset", "tiny-vae", "--out", str(tmp_path), "--force", "--set", "train.max_steps=1",
                     "train.sample_every=100"], capsys)
    assert code == 0, err
    (aside,) = tmp_path.glob("replaced-*")
    assert {k for k in before if not k.startswith("train.lock")} == {
        k for k in (str(p.relative_to(aside)) for p in aside.rglob("*") if p.is_file())}  # the old run, whole
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["task"] == "autoencoder"


def test_train_without_a_preset_needs_a_run_to_resume(tmp_path, capsys):
    code, err = cli(["train", "--out", str(tmp_path / "empty")], capsys)
    assert code == 1 and "--preset is needed" in error_line(err), err
    assert not (tmp_path / "empty").exists()


def test_invalid_json_in_a_run_folder_names_the_file(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    code, err = cli(train_args(tmp_path), capsys)
    assert code == 1 and f"{tmp_path / 'config.json'} is not valid JSON" in error_line(err), err
    assert (tmp_path / "config.json").read_text() == "{not json"


@pytest.mark.parametrize("flags, message", [
    (["--set", "train.max_steps=-5"], "train.max_steps must be an integer >= 0; got -5"),
    (["--minutes", "-1"], "train.max_minutes must be a number of minutes >= 0, or null; got -1.0"),
    (["--set", "train.batch_size=0"], "train.batch_size must be an integer >= 1; got 0"),
    (["--set", "train.checkpoint_every=0"], "train.checkpoint_every must be an integer >= 1; got 0"),
    (["--set", "train.ema_decay=1"], "train.ema_decay must be a number in [0, 1); got 1.0"),
    (["--set", "train.on_nonfinite=ignore"], "train.on_nonfinite must be stop or skip; got 'ignore'"),
])
def test_training_values_are_checked_before_any_work(tmp_path, capsys, flags, message):
    code, err = cli(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), *flags], capsys)
    assert code == 1 and error_line(err) == f"latentdiff train: {message}", err
    assert not (tmp_path / "run").exists()
