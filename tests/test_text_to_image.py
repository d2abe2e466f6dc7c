"""Text-to-image: the null condition, CFG with text, condition dropout, the text cache, adherence
scores, Fashion-MNIST captions, and the tiny text-to-image run through the CLI."""

import json

import pytest
import torch
from PIL import Image

from latentdiff.cli.main import main
from latentdiff.conditioning import TextConditioned, TextEncoder, null_condition, text_table
from latentdiff.conditioning.text import TextConfig
from latentdiff.data.fashion_mnist import class_caption, class_captions
from latentdiff.eval.adherence import summarize
from latentdiff.nn.unet import UNet, UNetConfig
from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss
from latentdiff.pipelines.conditions import Conditioning, conditions, guided
from latentdiff.precond import Denoiser
from latentdiff.sampling import CFGDenoiser
from latentdiff.schedules import DiscreteSchedule

PROMPTS = ["a small red circle in the center", "a large blue square above a small green triangle"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_length=16)


@pytest.fixture(scope="module")
def denoiser():
    cfg = UNetConfig(image_size=8, in_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8, 4), norm_groups=4, dropout=0.0, context_dim=384, pooled_dim=384)
    torch.manual_seed(0)
    net = UNet(cfg).eval()
    for p in net.parameters():  # leave the zero-initialised start so that the text matters
        torch.nn.init.normal_(p, std=0.1)
    return Denoiser(net, DiscreteSchedule("cosine"), "v")


def test_the_empty_prompt_encodes_to_the_null_condition(encoder):
    cond = encoder.condition(["", PROMPTS[0]])
    null = null_condition(1, 16, 384)
    for key in ("text", "text_mask", "pooled"):
        assert torch.equal(cond[key][:1], null[key])
    assert bool(cond["text_mask"][1].any())


def test_an_empty_prompt_is_the_unconditional_model(denoiser, encoder):
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    empty = encoder.condition(["", ""])
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, sigma, empty), denoiser(x, sigma, {}))
        assert not torch.allclose(denoiser(x, sigma, encoder.condition(PROMPTS)), denoiser(x, sigma, {}))


def test_cfg_scale_1_is_conditional_and_scale_0_unconditional_with_text(denoiser, encoder):
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    cond, uncond = conditions(denoiser, Conditioning(prompts=PROMPTS, negative_prompt="", text_encoder=encoder))
    with torch.no_grad():
        conditional, unconditional = denoiser(x, sigma, cond), denoiser(x, sigma, {})
        # the batched two-branch path at an interior scale, then the scales 1 and 0 themselves
        both = CFGDenoiser(denoiser, 0.5, uncond)(x, sigma, cond)
        torch.testing.assert_close(both, 0.5 * conditional + 0.5 * unconditional, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(guided(denoiser, cond, uncond, 1.0)(x, sigma, cond), conditional)
        torch.testing.assert_close(guided(denoiser, cond, uncond, 0.0)(x, sigma, cond), unconditional)
        w = 4.0
        torch.testing.assert_close(guided(denoiser, cond, uncond, w)(x, sigma, cond),
                                   unconditional + w * (conditional - unconditional), rtol=1e-4, atol=1e-4)


def test_a_negative_prompt_replaces_the_unconditional_branch(denoiser, encoder):
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])
    negative = "a large green square in the center"
    cond, uncond = conditions(denoiser, Conditioning(prompts=PROMPTS, negative_prompt=negative, text_encoder=encoder))
    with torch.no_grad():
        c, n = denoiser(x, sigma, cond), denoiser(x, sigma, encoder.condition([negative] * 2))
        torch.testing.assert_close(guided(denoiser, cond, uncond, 3.0)(x, sigma, cond), n + 3 * (c - n),
                                   rtol=1e-4, atol=1e-4)


def test_condition_dropout_writes_the_null_condition(encoder):
    batch = {"x": torch.zeros(64, 3, 8, 8), **encoder.condition(PROMPTS * 32)}
    loss = DiffusionLoss(DiffusionConfig(cond_drop_prob=0.25))
    cond = loss.cond_from_batch(batch, torch.Generator().manual_seed(0))
    dropped = ~cond["text_mask"].any(1)
    assert 5 <= int(dropped.sum()) <= 30  # about 16 of 64
    null = null_condition(int(dropped.sum()), 16, 384)
    for key in ("text", "text_mask", "pooled"):
        assert torch.equal(cond[key][dropped], null[key])
        assert torch.equal(cond[key][~dropped], batch[key][~dropped])
    kept = DiffusionLoss(DiffusionConfig(cond_drop_prob=0.0)).cond_from_batch(batch, torch.Generator())
    assert torch.equal(kept["text"], batch["text"])


def test_the_text_cache_equals_encoding_and_is_read_back(encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDIFF_CACHE", str(tmp_path))
    captions = [PROMPTS[i % 2] for i in range(5)]
    table = text_table(TextConfig(max_length=16), captions, encoder=encoder)
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 1
    again = text_table(TextConfig(max_length=16), captions, encoder=None)  # from disk: no encoder loaded
    fresh = encoder.condition(captions)
    for t in (table, again):
        rows = t.condition(captions)
        torch.testing.assert_close(rows["text"], fresh["text"], rtol=2e-3, atol=2e-3)  # stored as float16
        assert torch.equal(rows["text_mask"], fresh["text_mask"])
        torch.testing.assert_close(rows["pooled"], fresh["pooled"])

    class Images:
        def __len__(self):
            return 5

        def get_batch(self, index):
            return {"x": torch.zeros(len(index), 3, 4, 4)}

    batch = TextConditioned(Images(), captions, table).get_batch(torch.tensor([3, 0]))
    torch.testing.assert_close(batch["pooled"], fresh["pooled"][[3, 0]])
    with pytest.raises(ValueError, match="captions"):
        TextConditioned(Images(), captions[:4], table)


def test_adherence_summary_splits_single_and_two_object_prompts():
    ok = {"checks": {"colour_0": True, "shape_0": True, "count": True}, "all_correct": True}
    bad = {"checks": {"colour_0": True, "shape_0": False, "count": True}, "all_correct": False}
    report = summarize(PROMPTS, [[ok, ok, ok, bad], [ok, bad, bad, bad]])
    assert report["overall"]["single_object_all_correct"] == 0.75
    assert report["overall"]["two_object_all_correct"] == 0.25
    assert report["overall"]["all_correct"] == 0.5 and report["overall"]["attributes"]["shape"] == 0.5
    assert report["per_prompt"][1]["objects"] == 2


def test_fashion_mnist_captions_come_from_class_names():
    assert class_caption(9) == "a photo of an ankle boot"
    assert class_caption(9, template=1) == "ankle boot, product photo"
    labels = torch.arange(100) % 10
    captions = class_captions(labels)
    assert captions == class_captions(labels) and len(set(captions)) > 20
    assert all(any(name in c for name in ("boot",)) for c in captions[9::10])


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i")
    main(["train", "--preset", "tiny-t2i", "--out", str(out)])
    return out


def test_text_to_image_trains_samples_and_scores_adherence_through_the_cli(t2i_run, tmp_path):
    ckpt = str(t2i_run / "checkpoint")
    grid = tmp_path / "prompt.png"
    main(["sample", ckpt, "--prompt", PROMPTS[1], "--negative-prompt", "a small red circle in the center",
          "--guidance", "4", "--n", "4", "--steps", "3", "--out", str(grid)])
    assert Image.open(grid).size[1] > Image.open(grid).size[0] // 4  # a caption band above one row of 4
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    report_path, figure = tmp_path / "adherence.json", tmp_path / "adherence.png"
    main(["eval", "adherence", ckpt, "--prompts", str(prompts), "--n-per-prompt", "3", "--guidance", "2",
          "--steps", "3", "--json", str(report_path), "--png", str(figure)])
    report = json.loads(report_path.read_text())
    assert [p["prompt"] for p in report["per_prompt"]] == PROMPTS and report["overall"]["n_samples"] == 6
    assert {"single_object_all_correct", "two_object_all_correct"} <= set(report["overall"])
    assert figure.exists()


def test_prompts_need_a_text_model(tmp_path):
    tiny = tmp_path / "tiny"
    main(["train", "--preset", "tiny", "--out", str(tiny), "--set", "train.max_steps=1"])
    with pytest.raises(SystemExit, match="not a text-to-image model"):
        main(["sample", str(tiny / "checkpoint"), "--prompt", "a cat", "--out", str(tmp_path / "x.png")])
