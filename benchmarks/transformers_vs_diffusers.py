"""Our DiT and MMDiT against diffusers' DiTTransformer2DModel and SD3Transformer2DModel, on the same
weights: output agreement, then forward and training-step speed side by side with
``benchmarks/unet_vs_diffusers.py``'s method (``latentdiff.bench``: one warm-up, then rounds that
alternate the two libraries; medians with min-max; speed-up = diffusers time / ours, > 1: ours faster).

    python benchmarks/transformers_vs_diffusers.py --json benchmarks/results/transformers_vs_diffusers.json
    python benchmarks/transformers_vs_diffusers.py --device cuda --precision fp32,bf16 --compile   # on a GPU

Configs (``CONFIGS``): DiT-S/2 (Peebles & Xie 2023, Table 1: 12 blocks of width 384, 6 heads) on
32 x 32 x 4 latents with 1000 classes, and a small SD3 MMDiT (6 joint blocks of width 384, q/k
RMS-norm) on 32 x 32 x 16 latents with 16 text tokens of width 384.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latentdiff.bench import _row, _time_rounds, device_name
from latentdiff.bench.networks import BenchConfig, Side
from latentdiff.bench.tasks import forward_task, train_task
from latentdiff.bench.timing import OtherLoad

CONFIGS = {
    "dit": (BenchConfig("dit", 32, 4, train_batch=16, forward_batch=16, sample_images=0),
            dict(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=4, num_layers=12,
                 sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=32)),
    "mmdit": (BenchConfig("mmdit", 32, 16, train_batch=8, forward_batch=8, sample_images=0, text_len=16, text_dim=384),
              dict(sample_size=32, patch_size=2, in_channels=16, num_layers=6, attention_head_dim=64,
                   num_attention_heads=6, joint_attention_dim=384, caption_projection_dim=384,
                   pooled_projection_dim=384, out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm")),
}


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """The zero-initialised adaLN and output layers drawn at random (std 0.05), as after training (at
    initialisation both networks output zero and any comparison would pass); DiT's per-block copies
    of the embedder made one."""
    g = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 if ("norm" in k and "linear" in k) or "proj_out" in k else v
          for k, v in model.state_dict().items()}
    for k in [k for k in sd if ".norm1.emb." in k]:  # DiT: one time/class embedder, as converted checkpoints have
        sd[k] = sd["transformer_blocks.0." + k.split(".", 2)[2]]
    model.load_state_dict(sd)
    return model


def sides(name: str, device: torch.device, compile: bool) -> tuple[list[Side], float]:
    """(ours, diffusers) on the same weights, and the largest output difference on one batch (fp32)."""
    import diffusers

    from latentdiff.interop.diffusers_transformers import dit_from_diffusers, mmdit_from_diffusers
    from latentdiff.nn.dit import DiT
    from latentdiff.nn.mmdit import MMDiT

    bench, config = CONFIGS[name]
    torch.manual_seed(0)
    if name == "dit":
        ref = trained_looking(diffusers.DiTTransformer2DModel(**config))
        model, cfg, sd = dit_from_diffusers(dict(ref.config), ref.state_dict())
        ours = DiT(model, cfg)
        ours.load_state_dict(sd, strict=False)  # positions: ours are computed (diffusers' are not saved)
        labels = torch.arange(bench.train_batch, device=device) % 1000

        def call_ours(x, t, text):
            return ours(x, t, class_labels=labels[:len(x)])

        def call_ref(x, t, text):
            return ref(x, timestep=t, class_labels=labels[:len(x)]).sample
    else:
        ref = trained_looking(diffusers.SD3Transformer2DModel(**config))
        model, cfg, sd = mmdit_from_diffusers(dict(ref.config), ref.state_dict())
        ours = MMDiT(model, cfg)
        ours.load_state_dict(sd)
        pooled = torch.randn(bench.train_batch, 384, generator=torch.Generator().manual_seed(1)).to(device)

        def call_ours(x, t, text):
            return ours(x, t, text=text, pooled=pooled[:len(x)])

        def call_ref(x, t, text):
            return ref(x, encoder_hidden_states=text, pooled_projections=pooled[:len(x)], timestep=t).sample
    ours, ref = ours.to(device).eval(), ref.to(device).eval()  # eval: diffusers' DiT drops labels when training
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, bench.channels, 32, 32, generator=g).to(device)
    text = torch.randn(2, bench.text_len, bench.text_dim, generator=g).to(device) if bench.text_len else None
    t = torch.tensor([10.0, 700.0], device=device)
    with torch.no_grad():
        diff = float((call_ours(x, t, text) - call_ref(x, t, text)).abs().max())
    if compile:
        ours, ref = torch.compile(ours), torch.compile(ref)
    return [Side("latentdiff", ours, call_ours), Side("diffusers", ref, call_ref)], diff


def run(name: str, rounds: int, precisions: list[str], device: torch.device, compile: bool) -> dict:
    pair, diff = sides(name, device, compile)
    bench = CONFIGS[name][0]
    rows = []
    with OtherLoad() as load:
        for precision in precisions:
            bf16 = precision == "bf16"
            tasks = {s.name: [train_task(s, bench, device, bf16, False, steps=2),
                              forward_task(s, bench, device, bf16, False, repeats=2)] for s in pair}
            times = _time_rounds(pair, tasks, rounds, device, lambda m: print(f"{name} {precision}: {m}", flush=True))
            rows += [_row(task, precision, times[task.name]) for task in tasks["latentdiff"]]
    return {"config": name, "max_abs_output_difference_fp32": diff, "rounds": rounds, "compile": compile,
            "parameters": {s.name: sum(p.numel() for p in s.net.parameters()) for s in pair},
            "other_load_cores": round(load.cores, 2), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="dit,mmdit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    report = {"device": device_name(device), "torch": torch.__version__,
              "results": [run(c, args.rounds, args.precision.split(","), device, args.compile)
                          for c in args.configs.split(",")]}
    for result in report["results"]:
        print(f"{result['config']}: max |ours - diffusers| = {result['max_abs_output_difference_fp32']:.2e}")
        for row in result["rows"]:
            print(f"  {row['task']:8s} {row['precision']}: speed-up {row['speedup']:.2f} "
                  f"(ours {row['latentdiff']['median']:.3g}, diffusers {row['diffusers']['median']:.3g} {row['unit']})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
