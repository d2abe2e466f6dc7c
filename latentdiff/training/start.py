"""How a training run starts: one seeding point and the folder's lock for the whole run, resume or
fresh start (with the resume rule checked), and fresh runs initialised from another checkpoint."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

from accelerate.utils import set_seed
from torch import nn

from latentdiff.io.checkpoint import Checkpoint, checkpoint_exists, load_checkpoint
from latentdiff.training import lock as locking
from latentdiff.training.resume import check_resume


def seeded_run(run_fn: Callable) -> Callable:
    """Decorator for ``run_fn(cfg, out_dir, ...)``, a whole training run (build, train, post-process):
    it holds the run folder's lock throughout, and seeds torch, numpy and random with
    ``cfg.train.seed`` first, the one seeding point before anything random (the network's
    initialisation, sub-sampling) happens, so two fresh runs of one command are bitwise equal on CPU."""

    @functools.wraps(run_fn)
    def run(cfg, out_dir, *args, **kwargs):
        with locking.run_lock(out_dir):
            set_seed(cfg.train.seed)
            return run_fn(cfg, out_dir, *args, **kwargs)

    return run


def resume_state(out_dir: Path, ckpt_dir: Path, run_config: dict, say: Callable = print) -> Checkpoint | None:
    """The checkpoint to resume from (None for a fresh run), after checking that the command may
    resume it (``resume.check_resume``; ``say`` reports the allowed changes).

    Raises:
        ValueError: the checkpoint has no trainer state, or the command's config changes a field
            the resume rule refuses (also against the config.json of a run with no checkpoint yet).
    """
    if not checkpoint_exists(ckpt_dir):
        old_config = out_dir / "config.json"
        if old_config.is_file():  # a run that never checkpointed, or another run's leftovers
            try:
                old = json.loads(old_config.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{old_config} is not valid JSON ({err}); repair or remove it") from None
            check_resume(old, run_config, f"{out_dir} (it holds the config.json of a run with no checkpoint)")
        return None
    state = load_checkpoint(ckpt_dir, trainer_state=True)
    if state.trainer_state is None:
        raise ValueError(f"{state.path} has no trainer state (trainer_state.pt), so it cannot be resumed "
                         "exactly; to start a new run from its weights on purpose: latentdiff train ... "
                         f"--out NEW_DIR --init-from {state.path}")
    changes = check_resume(state.config, run_config, str(state.path))
    if changes:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        say(f"resuming {state.path} at step {state.trainer_state['step']} with {listed}")
    return state


def load_init_weights(model: nn.Module, ckpt: str | Path) -> None:
    """``train.init_from``: the weights of checkpoint ``ckpt`` (its EMA where it has one) into ``model``;
    ValueError naming the keys when they do not fit."""
    state = load_checkpoint(ckpt, trainer_state=False)
    weights = state.ema_state if state.ema_state is not None else state.model_state
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"train.init_from={ckpt}: its weights do not fit this model: {err}") from None
