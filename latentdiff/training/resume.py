"""What may change when a run folder is resumed, and applying the changes to the restored state.

The rule. A resumed run continues the same experiment, so the command's config must equal the
checkpoint's except in the fields of :data:`RESUMABLE`: how long to train (``max_steps``,
``max_minutes``), the optimisation settings that live in the optimizer and scheduler
(``lr``, ``weight_decay``, ``warmup_steps``, ``grad_clip``, ``ema_decay``), the cadence of logs,
checkpoints and sample grids, ``num_workers``, ``on_nonfinite``, ``init_from`` (only read by a
fresh run), ``grad_checkpointing`` (memory for time, the same maths) and the sampling defaults
(``sample.*``) and ``description``. Everything else (architecture, objective, data, batch size,
seed, precision, ``fsdp``, ...) is refused with an error naming the field and both values.
:data:`DERIVED` fields are written by the run itself (the latent scale measured after an
autoencoder's training) and are ignored; :data:`ADDED_FIELDS` missing from an older checkpoint's
config take the value that ran before they existed. The changed values are applied to the
restored optimizer and LR schedule (:func:`apply_train_settings`), so what config.json says is
what runs.
"""

from __future__ import annotations

from typing import Any

RESUMABLE_TRAIN = ("lr", "weight_decay", "warmup_steps", "grad_clip", "ema_decay", "max_steps", "max_minutes",
                   "sample_every", "checkpoint_every", "log_every", "num_workers", "on_nonfinite", "init_from",
                   "grad_checkpointing")
RESUMABLE = tuple(f"train.{name}" for name in RESUMABLE_TRAIN) + ("description",)
RESUMABLE_PREFIXES = ("sample.",)
DERIVED = ("autoencoder.scale_factor",)
# Fields added after checkpoints were written, with the value that ran before they existed: a saved
# config without the field equals a command with that value.
ADDED_FIELDS = {"train.fsdp": False, "train.grad_checkpointing": False}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}} -> {"train.lr": 1}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs: ``key -> (saved value, new value)`` (None = absent)."""
    a, b = flatten(saved), flatten(new)
    a = {**{k: v for k, v in ADDED_FIELDS.items() if k in b}, **a}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in DERIVED}


def is_resumable(key: str) -> bool:
    return key in RESUMABLE or key.startswith(RESUMABLE_PREFIXES)


def check_resume(saved: dict[str, Any], new: dict[str, Any], where: str) -> dict[str, tuple[Any, Any]]:
    """The allowed changes from the checkpoint's config ``saved`` to the command's ``new``.

    Raises:
        ValueError: a field outside the rule changed; names each field and both values.
    """
    changes = config_changes(saved, new)
    refused = {k: v for k, v in changes.items() if not is_resumable(k)}
    if refused:
        listed = "; ".join(f"{k}: checkpoint {old!r}, command {value!r}" for k, (old, value) in refused.items())
        raise ValueError(f"cannot resume {where} with a different run: {listed}. Only training length, "
                         "optimisation and logging settings may change on resume (latentdiff.training.resume); "
                         "give the same settings, or use another --out (--init-from CKPT starts a new run from "
                         "its weights)")
    return changes


def apply_train_settings(optimizer, scheduler, cfg) -> None:
    """Put the (possibly changed) lr, weight decay and warm-up of ``cfg`` (a TrainConfig) into the
    optimizer and LambdaLR ``scheduler`` just restored from a checkpoint, keeping their step."""
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    for lr_lambda in scheduler.lr_lambdas:
        if hasattr(lr_lambda, "warmup_steps"):
            lr_lambda.warmup_steps = int(cfg.warmup_steps)
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["initial_lr"], group["lr"], group["weight_decay"] = cfg.lr, lr, cfg.weight_decay
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next step
