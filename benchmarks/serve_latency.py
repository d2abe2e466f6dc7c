"""The server's overhead: one 32x32 image at 20 steps through ``POST /api/generate`` (a real uvicorn server
on loopback, JSON in, base64 PNG out, decoded by the client) against ``generate()`` called directly on the
same checkpoint with the same parameters.

The two alternate, round by round, after warm-up rounds (the server's first request loads the model and
the text encoder), each round with its own seed and the same seed for both; every server image is checked
pixel-equal to the direct one. The same again at 1 step shows the server's fixed cost per request
where sampling hides it less. Reported: the median and min-max of each, the overhead (median of the
per-round differences, in ms) and the ratio of the medians, the PNG encoding's own share, and the load
average of the machine before and after (``os.getloadavg``), since other processes share the CPU.

The model: ``tiny-t2i`` (the test suite's pixel text-to-image model, 32x32 RGB, MiniLM text encoder)
trained for ``--train-steps`` steps into a temporary folder, or ``--ckpt`` (any 32 px model).

    python benchmarks/serve_latency.py --json benchmarks/results/serve_latency.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentdiff.io.images import to_uint8
from latentdiff.io.png_meta import png_bytes
from latentdiff.pipelines import Conditioning, generate, load_model, text_encoder_for
from latentdiff.serve import ModelRegistry, ServeSettings, create_app, running_server
from latentdiff.serve.engine import picture

PROMPT = "a small red circle in the center"


def train_tiny(root: Path, steps: int) -> Path:
    """``tiny-t2i`` trained for ``steps`` steps into ``root/tiny-t2i``; its checkpoint directory."""
    from latentdiff.pipelines import train_run
    from latentdiff.presets import get_preset

    cfg = get_preset("tiny-t2i")
    cfg = cfg.replace(train=cfg.train.replace(max_steps=steps, sample_every=10**6, checkpoint_every=steps))
    train_run(cfg, root / "tiny-t2i")
    return root / "tiny-t2i" / "checkpoint"


def post_generate(url: str, body: dict) -> np.ndarray:
    """The client's side of one request: JSON out, the first base64 PNG back, decoded to pixels."""
    request = urllib.request.Request(url + "/api/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        out = json.loads(response.read())
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(out["images"][0]))))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(ckpt: Path, rounds: int, warmup: int, steps: int) -> dict:
    denoiser, autoencoder, cfg = load_model(ckpt)
    encoder = text_encoder_for(cfg)
    s = cfg.sample
    sampling = dict(sampler=s.sampler, steps=steps, spacing=s.spacing, guidance=s.guidance, threshold=s.threshold,
                    percentile=s.percentile)
    registry = ModelRegistry([ckpt])
    (name,) = registry.models

    def direct(seed: int) -> torch.Tensor:
        return generate(denoiser, 1, Conditioning(prompts=[PROMPT], text_encoder=encoder), **sampling, seed=seed,
                        autoencoder=autoencoder)

    times = {"direct": [], "http": []}
    load_before = os.getloadavg()
    with running_server(create_app(registry, ServeSettings())) as url:
        for r in range(-warmup, rounds):
            seed = 1000 + r
            body = dict(model=name, prompt=PROMPT, seed=seed, **sampling)
            order = ("direct", "http") if r % 2 == 0 else ("http", "direct")
            for which in order:
                start = time.perf_counter()
                if which == "direct":
                    image = direct(seed)
                else:
                    served = post_generate(url, body)
                elapsed = time.perf_counter() - start
                if r >= 0:
                    times[which].append(elapsed * 1000)
            if not np.array_equal(served.reshape(to_uint8(image)[0].shape), to_uint8(image)[0]):
                raise AssertionError(f"round {r}: the server's image differs from generate()'s")
    load_after = os.getloadavg()
    png_ms = []
    for _ in range(rounds):
        start = time.perf_counter()
        png_bytes(picture(image[0]), body, registry.models[name].config)
        png_ms.append((time.perf_counter() - start) * 1000)
    overhead = [h - d for h, d in zip(times["http"], times["direct"])]
    return {
        "model": f"{name} ({cfg.description}; {sum(p.numel() for p in denoiser.net.parameters())} parameters)",
        "checkpoint": str(ckpt), "image": f"{cfg.model.image_size}x{cfg.model.image_size}", "steps": steps,
        "sampling": sampling, "rounds": rounds, "warmup_rounds": warmup,
        "direct_generate_ms": spread(times["direct"]), "http_api_ms": spread(times["http"]),
        "overhead_ms": spread(overhead),
        "ratio_of_medians": statistics.median(times["http"]) / statistics.median(times["direct"]),
        "png_encode_with_metadata_ms": spread(png_ms),
        "pixel_equal": True, "loadavg_before": load_before, "loadavg_after": load_after,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "note": "server and client in one process (uvicorn in a thread, urllib client); the HTTP time includes "
                "queueing, PNG encoding with both metadata chunks, base64 and JSON both ways, and decoding",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="a 32 px text-to-image checkpoint (default: tiny-t2i, trained here)")
    parser.add_argument("--train-steps", type=int, default=20, help="training steps of the default tiny-t2i model")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds of each (alternating)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--fixed-steps", type=int, default=1, help="also measure at this many steps, where the "
                        "server's fixed cost per request is a larger share (0: not)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or train_tiny(Path(tmp), args.train_steps)
        result = measure(ckpt, args.rounds, args.warmup, args.steps)
        if args.fixed_steps:
            short = measure(ckpt, args.rounds, args.warmup, args.fixed_steps)
            result[f"at_{args.fixed_steps}_steps"] = {k: short[k] for k in ("direct_generate_ms", "http_api_ms",
                                                                          "overhead_ms", "ratio_of_medians")}
    if args.ckpt is None:
        result["checkpoint"] = f"tiny-t2i trained for {args.train_steps} steps (temporary)"
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
