"""Scale-out measurements (issue 24): the shard stream against the in-memory dataset, gradient
checkpointing's memory, and training on a data set larger than the process's memory limit.

(a) ``stream_vs_memory_steps_ratio``: training steps/s of the same small pixel U-Net (widths 32/64/64,
    32 px ``shapes``, batch 32) from the in-memory ``shapes`` dataset and from the same items written as
    shards (``data.name=shards``, one loader worker), alternating, ``--rounds`` rounds; steps/s of a run
    is the median of its metrics windows after the first; the ratio is the median of the per-round
    ratios (bar: >= 0.9).
    ``data_ms_per_batch_32``: each source's own cost per batch, without training (section d).
(b) ``grad_checkpointing``: ``latentdiff.bench.scale.grad_checkpointing_memory()`` (the distributed-
    training work), null when that function is not there.
(c) ``larger_than_memory``: ``--large-items`` generated ``shapes`` images at 64 px written as shards
    (decoded: items x 3 x 64 x 64 bytes), then a subprocess under ``RLIMIT_AS`` = ``--limit-mib`` (below
    the decoded size) trains a small model on them (the same widths at 64 px with 2x2 patches, batch 16)
    for ``--large-steps`` steps; the same limit refuses an in-memory copy of the decoded images
    (``in_memory_refused``).

    python benchmarks/scale_out.py --json benchmarks/results/scale_out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def shapes_items(n: int, size: int, seed: int = 0):
    """Items 0..n-1 of the ``shapes`` training split at ``size`` px, one at a time (never all in memory),
    exactly as ``ShapesDataset`` draws them."""
    import torch

    from latentdiff.data.shapes import HELD_OUT_PAIRS, caption_of, draw, random_scene

    held_out = set(HELD_OUT_PAIRS)
    for i in range(n):
        rng = np.random.default_rng([seed, 0, i])
        objs, relation = random_scene(rng, lambda c, s: (c, s) not in held_out)
        image = draw(objs, size, rng, textured=bool(rng.integers(0, 2)))
        yield {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "label": 0,
               "caption": caption_of(objs, relation)}


def write_shapes_shards(dst: Path, n: int, size: int, shard_size: int) -> float:
    """Write n shapes items as shards (reused when ``dst`` already holds them) -> seconds taken."""
    from latentdiff.data.shards import read_manifest, write_shards

    try:
        if read_manifest(dst)["items"] == n:
            return 0.0
    except FileNotFoundError:
        pass
    t0 = time.time()
    holds = {"image": {"format": "png", "channels": 3, "size": size}, "caption": True, "label": True,
             "latent": None, "text_embedding": None}
    write_shards(shapes_items(n, size), dst, shard_size, holds, {"kind": "shapes", "n": n, "size": size},
                 total=n, extra={"num_classes": 0})
    return time.time() - t0


def small_model_config(size: int, overrides: list[str]):
    from latentdiff.config import apply_overrides
    from latentdiff.presets import get_preset

    base = [f"data.image_size={size}", "data.channels=3", f"model.image_size={size}", "model.in_channels=3",
            "model.num_classes=0", "model.channels=32", "model.channel_mult=[1,2,2]", "model.norm_groups=8",
            "model.attention_resolutions=[]", "train.batch_size=32", "train.log_every=5",
            "train.checkpoint_every=100000", "train.sample_every=100000", "sample.n_grid=1", "sample.steps=1",
            "sample.guidance=1.0"]
    return apply_overrides(get_preset("tiny"), base + overrides)


def steps_per_s(out_dir: Path) -> float:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["steps_per_s"] for r in records[1:])


def stream_vs_memory(work: Path, rounds: int, steps: int, n: int, workers: int = 1) -> dict:
    import shutil

    from latentdiff.data import ShapesDataset
    from latentdiff.data.shards import dataset_items, write_shards
    from latentdiff.pipelines import train_run

    shards = work / "shapes32"
    holds = {"image": {"format": "png", "channels": 3, "size": 32}, "caption": True, "label": True,
             "latent": None, "text_embedding": None}
    write_shards(dataset_items(ShapesDataset(n=n, image_size=32)), shards, 250, holds, {"kind": "shapes", "n": n},
                 total=n, extra={"num_classes": 0})
    kinds = {"memory": ["data.name=shapes", f"data.n={n}"],
             "stream": ["data.name=shards", f"data.root={shards}", f"train.num_workers={workers}"]}
    rates = {k: [] for k in kinds}
    for r in range(rounds):
        for kind, extra in kinds.items():
            out = work / f"round{r}-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            train_run(small_model_config(32, extra + [f"train.max_steps={steps}"]), out, cpu=True)
            rates[kind].append(steps_per_s(out))
            print(f"round {r} {kind}: {rates[kind][-1]:.2f} steps/s", flush=True)
    ratios = [s / m for s, m in zip(rates["stream"], rates["memory"])]
    return {"stream_vs_memory_steps_ratio": statistics.median(ratios), "round_ratios": ratios,
            "steps_per_s": rates, "rounds": rounds, "steps_per_run": steps, "items": n,
            "model": "U-Net widths 32/64/64, 1 res block per level, no attention, 32 px, batch 32, fp32",
            "stream_workers": workers}


def data_cost(work: Path, n: int, batches: int = 60) -> dict:
    """Milliseconds per batch of 32 from each source alone (no training), in this process: what the
    stream adds to a step, free of the step-time noise of a shared machine."""
    import torch

    from latentdiff.data import ShapesDataset
    from latentdiff.data.shard_stream import ShardDataset
    from latentdiff.training.batches import make_batch_stream

    sources = {"memory": ShapesDataset(n=n, image_size=32), "stream": ShardDataset(work / "shapes32")}
    out = {}
    for name, dataset in sources.items():
        stream = make_batch_stream(dataset, 32, 0, 0, 1, 0, torch.device("cpu"))
        stream.next()
        t0 = time.perf_counter()
        for _ in range(batches):
            stream.next()
        out[name] = (time.perf_counter() - t0) / batches * 1000
    return {"data_ms_per_batch_32": out, "data_cost_note": "main process (0 workers), mean of "
            f"{batches} batches; 32 px PNG decode + collate for the stream"}


def grad_checkpointing() -> dict | None:
    try:
        from latentdiff.bench.scale import grad_checkpointing_memory
    except ImportError:
        return None
    return grad_checkpointing_memory()


def child_train(root: str, steps: int, out: str) -> None:
    """In the memory-limited subprocess: train on the shards, print one JSON line."""
    from latentdiff.pipelines import train_run

    t0 = time.time()
    cfg = small_model_config(64, ["data.name=shards", f"data.root={root}", f"train.max_steps={steps}",
                                  "train.num_workers=0", "train.batch_size=16", "model.patch_size=2"])
    summary = train_run(cfg, out, cpu=True)
    print(json.dumps({"steps": summary["steps"], "seconds": time.time() - t0,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def child_alloc(n: int, size: int) -> None:
    """In the memory-limited subprocess: try to hold the decoded images in memory (what an in-memory dataset does)."""
    try:
        images = np.empty((n, 3, size, size), dtype=np.uint8)
        images.fill(0)
        print(json.dumps({"refused": False}))
    except MemoryError:
        print(json.dumps({"refused": True}))


def limited(args: list[str], limit_mib: int) -> tuple[int, str]:
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, limit_mib << 20))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, *args], preexec_fn=set_limit, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode, proc.stdout


def larger_than_memory(work: Path, items: int, limit_mib: int, steps: int) -> dict:
    import shutil

    root = work / f"shapes64-{items}"
    write_s = write_shapes_shards(root, items, 64, 1000)
    decoded_mib = items * 3 * 64 * 64 / 2**20
    out = work / "large-run"
    shutil.rmtree(out, ignore_errors=True)
    code, stdout = limited(["--child-train", str(root), "--steps", str(steps), "--out", str(out)], limit_mib)
    report = json.loads(stdout.strip().splitlines()[-1]) if code == 0 else {}
    code_alloc, stdout_alloc = limited(["--child-alloc", str(items)], limit_mib)
    refused = json.loads(stdout_alloc.strip().splitlines()[-1])["refused"] if code_alloc == 0 else None
    shard_bytes = sum(p.stat().st_size for p in root.glob("shard-*.tar"))
    return {"items": items, "image_size": 64, "decoded_mib": decoded_mib, "shard_mib": shard_bytes / 2**20,
            "memory_limit_mib": limit_mib, "peak_rss_mib": report.get("peak_rss_mib"),
            "completed": code == 0 and report.get("steps") == steps, "steps": report.get("steps"),
            "train_seconds": report.get("seconds"), "write_seconds": write_s or None,
            "in_memory_refused": refused, "limit": "RLIMIT_AS (virtual address space) of the training process"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="benchmarks/results/scale_out.json")
    parser.add_argument("--work", default="runs/scale_out", help="shards and run folders")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run in (a)")
    parser.add_argument("--items", type=int, default=4000, help="items of the (a) data set")
    parser.add_argument("--large-items", type=int, default=200_000)
    parser.add_argument("--limit-mib", type=int, default=1536)
    parser.add_argument("--large-steps", type=int, default=200)
    parser.add_argument("--stream-workers", type=int, default=1, help="loader workers of the stream in (a)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d"],
                        help="sections to leave out (d: the data cost per batch of each source)")
    parser.add_argument("--merge", action="store_true", help="update the sections run in an existing --json")
    parser.add_argument("--child-train", help=argparse.SUPPRESS)
    parser.add_argument("--child-alloc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_train:
        return child_train(args.child_train, args.steps if args.steps else 10, args.out)
    if args.child_alloc:
        return child_alloc(args.child_alloc, 64)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = json.loads(Path(args.json).read_text()) if args.merge and Path(args.json).is_file() else {}
    tag = "_merged_sections" if args.merge else ""  # a merged run keeps the first run's load averages
    result.update({f"loadavg_start{tag}": os.getloadavg(), "threads": torch.get_num_threads()})
    if "a" not in args.skip:
        result.update(stream_vs_memory(work, args.rounds, args.steps, args.items, args.stream_workers))
    if "d" not in args.skip:
        result.update(data_cost(work, args.items))
    if "b" not in args.skip:
        result["grad_checkpointing"] = grad_checkpointing()
        if result["grad_checkpointing"] is None:
            result["grad_checkpointing_note"] = "latentdiff.bench.scale.grad_checkpointing_memory not available"
    if "c" not in args.skip:
        result["larger_than_memory"] = larger_than_memory(work, args.large_items, args.limit_mib, args.large_steps)
    result[f"loadavg_end{tag}"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
