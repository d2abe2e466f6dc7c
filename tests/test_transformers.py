"""Transformer denoisers (DiT, MMDiT): adaLN-Zero blocks start as the identity, MMDiT's joint attention
is attention over the concatenated sequence with per-stream projections (written out), text padding
never reaches the image stream, diffusers' DiT and SD3 transformers load and give equal outputs, and
tiny DiT / MMDiT train -> sample -> eval adherence through the CLI."""

import json
import math

import pytest
import torch

from clirun import run_cli
from latentdiff.nn.dit import DiT, DiTBlock
from latentdiff.nn.mmdit import MMDiT, JointBlock, joint_attention
from latentdiff.nn.transformer import TransformerConfig
from latentdiff.nn.unet import UNetConfig

TEXT = UNetConfig(image_size=8, in_channels=3, context_dim=12, pooled_dim=6)
SIZES = TransformerConfig(patch_size=2, dim=16, depth=2, heads=2, qk_norm=True)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (the zero-initialised ones too), so that a test sees every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def test_adaln_zero_blocks_are_the_identity_at_initialisation():
    torch.manual_seed(0)
    x, y, c = torch.randn(2, 9, 16), torch.randn(2, 5, 16), torch.randn(2, 16)
    text, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(DiTBlock(16, 2, context_dim=12, qk_norm=True)(x, c, text, mask), x)
    for last in (False, True):
        x2, y2 = JointBlock(16, 2, qk_norm=True, last=last)(x, y, c, mask)
        assert torch.equal(x2, x) and torch.equal(y2, y)
    for net in (DiT(TEXT, SIZES), MMDiT(TEXT, SIZES.replace(kind="mmdit"))):  # and the whole net predicts 0
        out = net(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0]), text=text, text_mask=mask,
                  pooled=torch.randn(2, 6))
        assert out.shape == (2, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))


def test_joint_attention_is_attention_over_the_concatenated_streams():
    torch.manual_seed(1)
    block = randomise(JointBlock(8, 2))
    x, y = torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    qx, kx, vx = block.image.attn.project(x)
    qy, ky, vy = block.text.attn.project(y)
    hx, hy = joint_attention((qx, qy), (kx, ky), (vx, vy), 2, None)
    # written out: each stream's own projections, one softmax over the 5 keys, head by head
    Wx, bx = block.image.attn.qkv.weight, block.image.attn.qkv.bias
    Wy, by = block.text.attn.qkv.weight, block.text.attn.qkv.bias
    qkv = torch.cat([x[0] @ Wx.T + bx, y[0] @ Wy.T + by])                      # (5, 24): image rows, then text
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(4), dim=1)
        heads.append(weights @ v[:, s])
    want = torch.cat(heads, dim=1)
    torch.testing.assert_close(hx[0], want[:3], rtol=0, atol=1e-6)
    torch.testing.assert_close(hy[0], want[3:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["dit", "mmdit"])
def test_text_padding_never_changes_the_image_stream(kind):
    torch.manual_seed(2)
    net = randomise((DiT if kind == "dit" else MMDiT)(TEXT, SIZES.replace(kind=kind))).eval()
    x, t, pooled = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 900.0]), torch.randn(2, 6)
    text = torch.randn(2, 3, 12)
    padded = torch.cat([text, 100 * torch.randn(2, 4, 12)], 1)                  # junk in the padding
    mask = torch.cat([torch.ones(2, 3), torch.zeros(2, 4)], 1).bool()
    with torch.no_grad():
        a = net(x, t, text=text, text_mask=torch.ones(2, 3, dtype=torch.bool), pooled=pooled)
        b = net(x, t, text=padded, text_mask=mask, pooled=pooled)
        empty = net(x, t, text=padded, text_mask=torch.zeros_like(mask), pooled=pooled)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert torch.isfinite(empty).all() and not torch.allclose(empty, a)         # the empty prompt: no NaN


def test_transformer_configs_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match="patch_size"):
        DiT(UNetConfig(image_size=9, in_channels=3), SIZES)
    with pytest.raises(ValueError, match="context_dim"):
        MMDiT(UNetConfig(image_size=8, in_channels=3), SIZES.replace(kind="mmdit"))
    with pytest.raises(ValueError, match="heads"):
        TransformerConfig(dim=16, heads=3)
    with pytest.raises(ValueError, match="transformer.kind"):
        TransformerConfig(kind="vit")


def with_random_modulation(sd: dict, seed: int) -> dict:
    """diffusers' zero-initialised adaLN and output layers, and its RMS-norm scales, drawn at random."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if ("norm" in k and "linear" in k) or "proj_out" in k:
            v = torch.randn(v.shape, generator=g) * 0.3
        elif ".norm_" in k:  # q/k RMS-norm scales
            v = 1 + torch.randn(v.shape, generator=g) * 0.3
        out[k] = v
    return out


def test_our_dit_loads_diffusers_dit_weights_and_gives_its_outputs():
    diffusers = pytest.importorskip("diffusers")
    from latentdiff.interop.diffusers_transformers import dit_from_diffusers

    torch.manual_seed(3)
    ref = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                          norm_num_groups=1).eval()
    sd = with_random_modulation(ref.state_dict(), 0)
    for k in [k for k in sd if ".norm1.emb." in k]:  # one embedder, as converted DiT checkpoints have
        sd[k] = sd["transformer_blocks.0." + k.split(".", 2)[2]]
    ref.load_state_dict(sd)
    model, cfg, ours_sd = dit_from_diffusers(dict(ref.config), sd)
    ours = DiT(model, cfg).eval()
    assert set(ours.load_state_dict(ours_sd, strict=False).missing_keys) == {"patch.pos"}  # ours is computed
    x, t, labels = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([1, 10])
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=labels).sample
        torch.testing.assert_close(ours(x, t, class_labels=labels), want, rtol=0, atol=1e-5)
    key = "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"
    sd[key] = sd[key] + 1
    with pytest.raises(ValueError, match="embedder"):
        dit_from_diffusers(dict(ref.config), sd)


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_our_mmdit_loads_diffusers_sd3_weights_and_gives_its_outputs(qk_norm):
    diffusers = pytest.importorskip("diffusers")
    from latentdiff.interop.diffusers_transformers import mmdit_from_diffusers

    torch.manual_seed(4)
    ref = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=3, num_layers=3,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                          caption_projection_dim=16, pooled_projection_dim=6, out_channels=3,
                                          pos_embed_max_size=12, qk_norm=qk_norm).eval()
    sd = with_random_modulation(ref.state_dict(), 1)
    ref.load_state_dict(sd)
    model, cfg, ours_sd = mmdit_from_diffusers(dict(ref.config), sd)
    ours = MMDiT(model, cfg).eval()
    ours.load_state_dict(ours_sd)  # strict: every key maps
    x, t, text, pooled = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(2, 5, 12), torch.randn(2, 6)
    with torch.no_grad():
        want = ref(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample
        torch.testing.assert_close(ours(x, t, text=text, pooled=pooled), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-dit", "tiny-mmdit"])
def test_a_tiny_transformer_trains_samples_and_evaluates_through_the_cli(tmp_path, capsys, preset):
    run = tmp_path / preset
    code, _, err = run_cli(capsys, ["train", "--preset", preset, "--out", str(run)])
    assert code == 0, err
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["transformer"]["kind"] == preset.split("-")[1] and config["diffusion"]["parameterisation"] == "flow"
    args = ["--prompt", "a small red circle in the left"] if preset == "tiny-mmdit" else ["--class-label", "3"]
    code, _, err = run_cli(capsys, ["sample", str(run / "checkpoint"), "--n", "2", "--steps", "3", *args,
                                    "--out", str(tmp_path / "s.png")])
    assert code == 0, err
    if preset == "tiny-mmdit":
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a small red circle in the left\na large blue square above a small green triangle\n")
        code, out, err = run_cli(capsys, ["eval", "adherence", str(run / "checkpoint"), "--prompts", str(prompts),
                                          "--n-per-prompt", "2", "--json", str(tmp_path / "adh.json")])
        assert code == 0, err
        report = json.loads((tmp_path / "adh.json").read_text())
        assert report["overall"]["n_samples"] == 4 and 0 <= report["overall"]["all_correct"] <= 1
