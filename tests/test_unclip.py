"""unCLIP (DALL·E 2): the prior's causal mask and null caption, the decoder's null image embedding
and its dropout, slerp's closed form, the candidate choice, variations conditioned on the image's
embedding, and clip -> prior -> decoder -> sample / vary / interpolate through the CLI, with the
refusal of a prior and decoder on different CLIP models."""

import math

import pytest
import torch
import torch.nn.functional as F

from clirun import run_cli
from latentdiff.cli.main import main
from latentdiff.io.images import save_image
from latentdiff.io.png_meta import parse_parameters, read_png_parameters
from latentdiff.nn.prior import PriorConfig, PriorTransformer, causal_mask
from latentdiff.nn.unet import UNet
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.objectives.unclip import DecoderLoss, UnCLIPConfig
from latentdiff.pipelines.conditions import Conditioning, conditions
from latentdiff.pipelines.diffusion import make_denoiser
from latentdiff.pipelines.unclip import Decoder, clip_with_fingerprint, load_prior, pick_candidates
from latentdiff.presets import get_preset
from latentdiff.unclip.embeddings import slerp

PRIOR = PriorConfig(embed_dim=8, text_dim=12, max_length=5, width=16, layers=2, heads=2)


def prior_inputs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True, True, True, False, False]])[:B]
    return dict(x_t=torch.randn(B, 8, generator=g), t=torch.tensor([10.0, 500.0, 999.0])[:B],
                text=torch.randn(B, 5, 12, generator=g), text_mask=mask,
                pooled=F.normalize(torch.randn(B, 8, generator=g), dim=-1))


def test_causal_mask_is_lower_triangular_and_hides_padding():
    valid = torch.tensor([[True, False, True]])
    want = torch.tensor([[[1, 0, 0], [1, 0, 0], [1, 0, 1]]], dtype=torch.bool)
    assert torch.equal(causal_mask(valid), want)


def test_the_prior_is_causal_and_its_output_ignores_anything_after_the_query():
    torch.manual_seed(0)
    net = PriorTransformer(PRIOR).eval()
    tokens, valid = net.sequence(**prior_inputs())
    N = tokens.shape[1]
    assert N == PRIOR.max_length + 5
    with torch.no_grad():
        h = net.transformer(tokens, valid)
        # tokens appended after the query change nothing before them
        junk = torch.randn(3, 4, PRIOR.width)
        h_more = net.transformer(torch.cat([tokens, junk], 1),
                                 torch.cat([valid, torch.ones(3, 4, dtype=torch.bool)], 1))
        torch.testing.assert_close(h_more[:, :N], h)
        # changing the noised embedding's token (position N - 2) leaves every earlier state alone and
        # moves its own and the query's
        bumped = tokens.clone()
        bumped[:, N - 2] += torch.randn(3, PRIOR.width)  # not a constant: LayerNorm removes those
        h_bumped = net.transformer(bumped, valid)
    torch.testing.assert_close(h_bumped[:, :N - 2], h[:, :N - 2])
    assert (h_bumped[:, N - 2:] - h[:, N - 2:]).abs().amax() > 1e-3


def test_the_prior_reads_a_missing_caption_as_a_dropped_one():
    torch.manual_seed(0)
    net = PriorTransformer(PRIOR).eval()
    inp = prior_inputs()
    dropped = dict(inp, text=torch.zeros_like(inp["text"]), text_mask=torch.zeros_like(inp["text_mask"]),
                   pooled=torch.zeros_like(inp["pooled"]))
    with torch.no_grad():
        out_none = net(inp["x_t"], inp["t"])
        torch.testing.assert_close(net(**dropped), out_none)
        # the values under a False mask do not matter
        torch.testing.assert_close(net(**dict(dropped, text=torch.randn_like(inp["text"]))), out_none)
        assert (net(**inp) - out_none).abs().amax() > 1e-4


def unzero(net: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised layers (every block's last conv, attention outputs, conv_out; still
    near zero after a few training steps) random weights, so that the output depends on every input."""
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() < 1e-2:
                p.normal_(0, 0.05)
    return net


def tiny_decoder_net(seed=0) -> UNet:
    torch.manual_seed(seed)
    return unzero(UNet(get_preset("tiny-unclip-decoder").model).eval())


def test_dropping_the_image_embedding_is_exactly_the_null_condition():
    net = tiny_decoder_net()
    B, D = 2, net.cfg.image_embed_dim
    x, t = torch.randn(B, 3, 16, 16), torch.tensor([100.0, 700.0])
    embeds = F.normalize(torch.randn(B, D), dim=-1)
    with torch.no_grad():
        none = net(x, t)
        torch.testing.assert_close(net(x, t, image_embed=torch.zeros(B, D)), none)
        assert (net(x, t, image_embed=embeds) - none).abs().amax() > 1e-4
    # training drops to zeros, at the configured rate, independently of the caption
    batch = {"x": x, "image_embed": embeds}
    always = DecoderLoss(DiffusionConfig(), UnCLIPConfig(image_drop_prob=1.0)).cond_from_batch(batch, torch.Generator())
    assert torch.equal(always["image_embed"], torch.zeros(B, D))
    never = DecoderLoss(DiffusionConfig(), UnCLIPConfig(image_drop_prob=0.0)).cond_from_batch(batch, torch.Generator())
    assert torch.equal(never["image_embed"], embeds)
    big = {"x": torch.zeros(4000, 1), "image_embed": torch.ones(4000, D)}
    kept = DecoderLoss(DiffusionConfig(), UnCLIPConfig(image_drop_prob=0.1)).cond_from_batch(
        big, torch.Generator().manual_seed(0))["image_embed"][:, 0]
    assert abs(float((kept == 0).float().mean()) - 0.1) < 0.015  # 4 sigma of a binomial at n = 4000
    # sampling's unconditional branch is the zero embedding too
    cond, uncond = conditions(make_denoiser(net, get_preset("tiny-unclip-decoder")), Conditioning(image_embeds=embeds))
    assert torch.equal(cond["image_embed"], embeds) and torch.equal(uncond["image_embed"], torch.zeros(B, D))


def test_slerp_has_its_closed_form():
    a, b = torch.tensor([1.0, 0.0, 0.0]), F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    w = torch.linspace(0, 1, 5)
    path = slerp(a, b, w)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=1), torch.ones(5))
    angles = torch.arccos((path @ a).clamp(-1, 1))
    torch.testing.assert_close(angles, w * math.pi / 4)  # the angle grows linearly along the arc


def test_the_candidate_nearest_the_text_embedding_is_kept():
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    draws = torch.tensor([[0.0, 3.0], [2.0, 0.1],      # prompt 0: the second is nearer [1, 0]
                          [0.0, 5.0], [4.0, 1.0]])     # prompt 1: the first is nearer [0, 1]
    picked = pick_candidates(draws, text, 2)
    torch.testing.assert_close(picked, F.normalize(torch.tensor([[2.0, 0.1], [0.0, 5.0]]), dim=-1))


def test_the_decoder_and_prior_configs_refuse_what_cannot_work():
    cfg = get_preset("tiny-unclip-decoder")
    with pytest.raises(ValueError, match="image_embed_dim"):
        cfg.replace(unclip=None)
    with pytest.raises(ValueError, match="context_dim"):
        cfg.model.replace(context_dim=0)
    prior = get_preset("tiny-prior")
    with pytest.raises(ValueError, match="max_length"):
        prior.replace(prior=prior.prior.replace(max_length=8))
    with pytest.raises(ValueError, match="heads"):
        PriorConfig(width=10, heads=4)


@pytest.fixture(scope="module")
def tiny_unclip(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTDIFF_CACHE", str(root / "cache"))
        clip = str(root / "clip" / "checkpoint")
        main(["train", "--preset", "tiny-clip", "--out", str(root / "clip")])
        main(["train", "--preset", "tiny-prior", "--out", str(root / "prior"), "--set", f"clip={clip}"])
        main(["train", "--preset", "tiny-unclip-decoder", "--out", str(root / "decoder"),
              "--set", f"unclip.clip={clip}"])
        # a second CLIP model (another seed) and a prior on it
        main(["train", "--preset", "tiny-clip", "--out", str(root / "clip2"), "--set", "train.seed=1"])
        main(["train", "--preset", "tiny-prior", "--out", str(root / "prior2"),
              "--set", f"clip={root / 'clip2' / 'checkpoint'}"])
        from latentdiff.data import DataConfig, build_dataset

        test = build_dataset(DataConfig(name="shapes", image_size=32, channels=3, n=4), "test").get_batch([0, 1])["x"]
        save_image(test[0], root / "a.png")
        save_image(test[1].mean(0, keepdim=True), root / "b_grey.png")  # grey and 32 px: converted and resized
        yield root


def test_unclip_samples_varies_and_interpolates_through_the_cli(tiny_unclip, tmp_path, capsys):
    root = tiny_unclip
    decoder, prior = str(root / "decoder" / "checkpoint"), str(root / "prior" / "checkpoint")
    out = tmp_path / "t2i.png"
    code, stdout, err = run_cli(capsys, ["sample", decoder, "--prior", prior, "--prompt", "a small red circle in the "
                                         "center", "--n", "2", "--steps", "2", "--prior-steps", "2", "--out", str(out)])
    assert code == 0, err
    assert out.exists() and "2 images" in stdout
    fields = parse_parameters(read_png_parameters(out.read_bytes())[0])  # the PNG says what made it
    assert (fields["prompt"], fields["steps"]) == ("a small red circle in the center", 2)
    out = tmp_path / "vary.png"
    code, stdout, err = run_cli(capsys, ["vary", decoder, str(root / "a.png"), str(root / "b_grey.png"), "--n", "3",
                                         "--steps", "2", "--out", str(out)])
    assert code == 0, err
    assert out.exists() and "2 source(s) x 3 variations" in stdout
    assert "b_grey.png is L; converted to RGB" in err and "resized to 16x16" in err
    out = tmp_path / "strip.png"
    code, stdout, err = run_cli(capsys, ["interpolate", decoder, str(root / "a.png"), str(root / "b_grey.png"),
                                         "--k", "4", "--steps", "2", "--out", str(out)])
    assert code == 0, err
    assert out.exists() and "4 images" in stdout
    # a prior on another CLIP model: refused, naming both checkpoints
    other = str(root / "prior2" / "checkpoint")
    code, _, err = run_cli(capsys, ["sample", decoder, "--prior", other, "--n", "1", "--out", str(tmp_path / "x.png")])
    assert code != 0 and other in err and decoder in err and "fingerprint" in err
    # a file that is not an image: refused by name
    (tmp_path / "notes.png").write_text("not an image")
    code, _, err = run_cli(capsys, ["vary", decoder, str(tmp_path / "notes.png"), "--out", str(tmp_path / "y.png")])
    assert code != 0 and "notes.png" in err


def test_a_variation_is_conditioned_on_its_source_embedding(tiny_unclip):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTDIFF_CACHE", str(tiny_unclip / "cache"))
        decoder = Decoder(tiny_unclip / "decoder" / "checkpoint")
    torch.manual_seed(0)
    unzero(decoder.denoiser.net)  # 6 training steps leave the zero-initialised layers near zero
    from latentdiff.data import DataConfig, build_dataset

    images = build_dataset(DataConfig(name="shapes", image_size=16, channels=3, n=4), "test").get_batch([0, 1])["x"]
    e = decoder.embed(images)
    assert not torch.allclose(e[0], e[1])
    same_noise = dict(seed=3, steps=2)
    a, b = decoder.decode(e[:1], **same_noise), decoder.decode(e[1:], **same_noise)
    null = decoder.decode(torch.zeros_like(e[:1]), **same_noise)
    assert (a - b).abs().amax() > 1e-3      # the embedding changes the output
    assert (a - null).abs().amax() > 1e-3   # the noise alone is not the variation
    torch.testing.assert_close(decoder.vary(images[:1], 1, **same_noise), a)  # vary = decode(embed(image))
    assert (a - images[:1]).abs().amax() > 1e-2  # and no copy of the source


def test_a_changed_clip_checkpoint_is_refused(tiny_unclip):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTDIFF_CACHE", str(tiny_unclip / "cache"))
        _, cfg, _ = load_prior(tiny_unclip / "prior" / "checkpoint")
        with pytest.raises(ValueError, match="has changed since"):
            clip_with_fingerprint(cfg.clip, "0" * 16)
