"""``latentdiff train``'s arguments -> the run config.

The base is the run folder's own config when the folder holds a run (so ``latentdiff train --out
RUN`` resumes it as it was, whatever flags first made it), else the named preset. ``--data``,
``--set``, ``--init-from`` and ``--minutes`` apply on top; which changes a resume may then make is
the trainer's resume rule (``latentdiff.training.resume``). A ``--preset`` other than the one the
folder's run was made from is refused unless ``--force``, which moves that run aside into
``RUN/replaced-<UTC time>/`` and starts a new one.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from latentdiff.config import apply_overrides
from latentdiff.io.checkpoint import checkpoint_exists, read_config
from latentdiff.presets import AutoencoderRunConfig, RunConfig, get_preset, run_config_from_dict

RUN_FILES = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "config.json", "metrics.jsonl", "loss.png", "samples")


def saved_run_config(out: Path) -> dict | None:
    """The config of the run in folder ``out`` (its checkpoint's, else its config.json), or None."""
    if checkpoint_exists(out / "checkpoint"):
        return read_config(out / "checkpoint")
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): repair it, or --force to start a new run there") from None


def base_config(preset: str | None, out: Path, overrides: list[str], force: bool):
    """The config that ``overrides`` apply to: the folder's run, or the preset (see the module docstring)."""
    saved = None if force else saved_run_config(out)
    if saved is None:
        if preset is None:
            raise ValueError(f"--preset is needed: {out} holds no run to resume (`latentdiff presets` lists them)")
        return get_preset(preset)
    cfg = run_config_from_dict(saved)
    if preset is not None:
        named = apply_overrides(get_preset(preset), [o for o in overrides if o.startswith("description=")])
        if type(named) is not type(cfg) or named.description != cfg.description:
            raise ValueError(f"{out} holds a run of another preset ({cfg.description!r}), not {preset}: use another "
                             f"--out, `latentdiff train --out {out}` to resume that run, or --force to replace it")
    return cfg


def replace_run(out: Path) -> Path | None:
    """``--force`` (under the folder's lock): the run files of ``out`` into ``out/replaced-<UTC time>/``;
    nothing is deleted. Returns that folder (None if there was no run)."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return None
    aside = out / time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime())
    aside.mkdir()
    for name in present:
        shutil.move(str(out / name), str(aside / name))
    print(f"--force: the earlier run of {out} is now in {aside}", file=sys.stderr)
    return aside


def train_config(args):
    """The run config of a ``latentdiff train`` command line (with the data's resolution notes printed)."""
    from latentdiff.data.resolve import data_overrides, resolve_data

    out = Path(args.out)
    base = base_config(args.preset, out, list(args.set or []), args.force)
    if args.data is not None and getattr(base, "task", None) == "lora":  # a LoRA run's folder is data.path
        overrides = [f"data.path={args.data}", *(args.set or [])]
    else:
        overrides = data_overrides(args.data, args.set)
    cfg = apply_overrides(base, overrides)
    if isinstance(cfg, (RunConfig, AutoencoderRunConfig)):
        cfg, lines = resolve_data(cfg, explicit=[item.split("=", 1)[0].strip() for item in args.set or []])
        for line in lines:
            print(line, file=sys.stderr)
        if lines:  # the notes said it: ImageFolder's own warning about loose files would repeat it
            import warnings

            warnings.filterwarnings("ignore", message=r"ImageFolder\(.*\): skipped .* at the top level")
    if args.init_from is not None:
        cfg = cfg.replace(train=cfg.train.replace(init_from=args.init_from))
    if args.minutes is not None:
        cfg = cfg.replace(train=cfg.train.replace(max_minutes=args.minutes))
    return cfg
