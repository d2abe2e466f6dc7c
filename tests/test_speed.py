"""The speed work leaves the numbers alone; the benchmark networks are diffusers' networks.

* channels_last (``accel.prepare``) and torch.compile give the plain path's outputs within fp32
  tolerance, and a fixed-seed sampler run gives the same images with and without compile;
* the Stable Diffusion transformer layer equals diffusers' ``Transformer2DModel`` with the same
  weights, and the bench-S / bench-L networks have diffusers' parameter counts;
* the timing harness measures peak memory it can check (one known allocation) and runs end to end.
"""

import pytest
import torch

from latentdiff.accel import default_compile, prepare, training_memory_format, use_channels_last
from latentdiff.nn import UNet, UNetConfig
from latentdiff.nn.attention import GEGLU, SpatialTransformer, token_attention
from latentdiff.precond import Denoiser
from latentdiff.sampling import sample_ddim, sample_dpmpp_2m
from latentdiff.schedules import DiscreteSchedule, sigma_grid


def text_unet(**kw) -> UNet:
    cfg = UNetConfig(**{**dict(image_size=8, in_channels=4, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                               attention_resolutions=(8,), num_heads=4, dropout=0.0, norm_groups=8, context_dim=12,
                               transformer=True, scale_shift_norm=False), **kw})
    torch.manual_seed(0)
    net = UNet(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net.eval()


def test_speed_defaults_follow_the_measurements():
    """compile on CUDA only; channels_last on CUDA and for fp32 on CPU (NHWC GroupNorm is slow in bf16)."""
    assert default_compile("cuda") and not default_compile("cpu")
    assert use_channels_last("cuda", bf16=True) and use_channels_last("cpu", bf16=False)
    assert not use_channels_last("cpu", bf16=True)
    assert training_memory_format("bf16", cpu=True) == torch.contiguous_format
    assert training_memory_format("no", cpu=True) == training_memory_format("auto", cpu=True) == torch.channels_last
    net = prepare(text_unet(), bf16=True)
    assert net.conv_in.weight.is_contiguous()
    assert prepare(net).conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("transformer", [False, True])
def test_channels_last_path_matches_plain(transformer):
    net = text_unet(transformer=transformer)
    x, t, text = torch.randn(3, 4, 8, 8), torch.tensor([1.0, 400.0, 900.0]), torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        plain = net(x, t, text=text, text_mask=mask)
        fast = prepare(net, channels_last=True, compile=False)(x.contiguous(memory_format=torch.channels_last), t,
                                                              text=text, text_mask=mask)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_all_true_mask_equals_no_mask():
    """text_mask None (every token real) skips the attention mask; all-True masks give the same output."""
    net = text_unet()
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 700.0]), torch.randn(2, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, text=text), net(x, t, text=text, text_mask=torch.ones(2, 5, dtype=bool)))


def test_compiled_sampler_gives_the_same_images():
    """DDIM and DPM-Solver++ from one seed: compiled network vs eager, within fp32 tolerance."""
    schedule = DiscreteSchedule("linear", 1000)
    text = torch.randn(2, 5, 12)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 80.0
    runs = {}
    for compiled in (False, True):
        denoiser = Denoiser(prepare(text_unet(), compile=compiled), schedule, "eps")
        runs[compiled] = [s(denoiser, x_T.clone(), sigma_grid(schedule, 4, "karras"), cond={"text": text})
                          for s in (sample_ddim, sample_dpmpp_2m)]
    for eager, compiled in zip(runs[False], runs[True]):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_token_attention_and_geglu_closed_forms():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    out = token_attention(q, k, v, heads=2, mask=mask)
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        w = (q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0).masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        torch.testing.assert_close(out[..., sl], w @ v[..., sl])
    ff = GEGLU(8, mult=2)
    x = torch.randn(3, 8)
    a, g = ff.proj_in(x).split(16, dim=-1)
    torch.testing.assert_close(ff(x), ff.proj_out(a * 0.5 * g * (1 + torch.erf(g / 2**0.5))))


def test_spatial_transformer_equals_diffusers():
    """Our transformer layer with diffusers' Transformer2DModel's weights gives its outputs."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(0)
    theirs = Transformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32, norm_num_groups=8,
                                cross_attention_dim=12).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ours = SpatialTransformer(32, 12, num_heads=4, groups=8).eval()
    ours.norm.eps = theirs.norm.eps
    b = theirs.transformer_blocks[0]
    a1, a2 = b.attn1, b.attn2
    weights = {"norm": theirs.norm, "proj_in": theirs.proj_in, "proj_out": theirs.proj_out,
               "block.norm1": b.norm1, "block.norm2": b.norm2, "block.norm3": b.norm3,
               "block.self_out": a1.to_out[0], "block.cross_out": a2.to_out[0], "block.q": a2.to_q,
               "block.ff.proj_in": b.ff.net[0].proj, "block.ff.proj_out": b.ff.net[2]}
    state = {f"{k}.{n}": v for k, m in weights.items() for n, v in m.state_dict().items()}
    state["block.qkv.weight"] = torch.cat([a1.to_q.weight, a1.to_k.weight, a1.to_v.weight])
    state["block.kv.weight"] = torch.cat([a2.to_k.weight, a2.to_v.weight])
    ours.load_state_dict(state)
    x, context = torch.randn(2, 32, 4, 4), torch.randn(2, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, context), theirs(x, encoder_hidden_states=context).sample,
                                   rtol=1e-5, atol=1e-5)


def test_bench_networks_match_diffusers_parameter_counts():
    from latentdiff.bench.networks import count, diffusers_side, latentdiff_side

    assert count(latentdiff_side("S")) == count(diffusers_side("S")) == {"unet": 6_472_195}
    ours, theirs = count(latentdiff_side("L")), count(diffusers_side("L"))
    assert theirs == {"unet": 9_181_444, "vae": 3_789_095}
    assert ours["unet"] - theirs["unet"] == 384          # our learned null text token (1, 1, 384)
    assert theirs["vae"] - ours["vae"] == 8 * 8 + 8 + 4 * 4 + 4  # diffusers' 1x1 quant_conv / post_quant_conv


def test_measure_sees_a_known_allocation():
    from latentdiff.bench.timing import measure

    seconds, peak = measure(lambda: torch.ones(64 * 2**20 // 4).add_(1), torch.device("cpu"))
    assert seconds > 0 and 60 <= peak < 200   # one 64 MiB tensor (plus what the call itself needs)


def test_bench_cli_runs_and_prints_the_table(capsys):
    from latentdiff.cli.main import main

    main(["bench", "--config", "L", "--rounds", "1", "--precision", "fp32", "--train-steps", "1", "--no-sampling"])
    out = capsys.readouterr().out
    for task in ("train", "forward", "vae encode", "vae decode"):
        assert f"| {task} | fp32 |" in out
    assert "speed-up" in out
