"""The CLIP-style joint embedding: InfoNCE against its definition, repeated captions, the temperature
clamp, unit-norm embeddings, retrieval recall on a hand-made similarity, a tiny model learning a
tiny problem, and the tiny run trained, reloaded and evaluated."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from latentdiff.clip import (CLIPConfig, CLIPLoss, CLIPModel, clip_score, info_nce, recall_from_similarity,
                             retrieval_recall, zero_shot_accuracy)
from latentdiff.clip.data import fmnist_class_prompts
from latentdiff.config import apply_overrides
from latentdiff.io.checkpoint import load_checkpoint
from latentdiff.pipelines.clip import evaluate_clip, load_clip, train_clip_run
from latentdiff.presets.clip import CLIPRunConfig, fmnist_clip, is_clip_config, shapes_clip, tiny_clip

TINY = CLIPConfig(in_channels=3, image_size=16, width=8, stage_mult=(1, 2), norm_groups=4, text_width=32, heads=2,
                  embed_dim=16)


def hand_info_nce(I, T, scale):
    """The symmetric InfoNCE written out with Python floats: mean over rows of -log softmax."""
    n = len(I)
    logits = [[math.exp(scale) * sum(a * b for a, b in zip(I[i], T[j])) for j in range(n)] for i in range(n)]
    rows = [-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(n)]
    cols = [-logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(n))) for j in range(n)]
    return 0.5 * (sum(rows) / n + sum(cols) / n)


def unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_info_nce_equals_its_definition_and_is_symmetric():
    I = unit([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    T = unit([[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    scale = math.log(3.0)
    expected = hand_info_nce(I.tolist(), T.tolist(), scale)
    assert float(info_nce(I, T, scale)) == pytest.approx(expected, rel=1e-6)
    assert float(info_nce(T, I, scale)) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(info_nce(I.float(), T.float(), scale), info_nce(T.float(), I.float(), scale))


def test_repeated_captions_are_all_positives_and_distinct_ids_give_plain_info_nce():
    g = torch.Generator().manual_seed(0)
    I, T = F.normalize(torch.randn(6, 8, generator=g), dim=1), F.normalize(torch.randn(6, 8, generator=g), dim=1)
    plain = info_nce(I, T, 2.0)
    assert torch.equal(info_nce(I, T, 2.0, torch.tensor([5, 3, 0, 1, 2, 4])), plain)
    # items 0 and 1 share a caption: each row's target is uniform over {0, 1}
    ids = torch.tensor([7, 7, 1, 2, 3, 4])
    logits = math.exp(2.0) * I @ T.T
    target = torch.eye(6)
    target[:2, :2] = 0.5
    by_hand = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(info_nce(I, T, 2.0, ids), by_hand)
    # one caption (equal text rows) for two images: uniform targets over equal logits change no
    # cross-entropy, so the value equals plain InfoNCE (see clip/loss.py)
    T2 = T.clone()
    T2[1] = T2[0]
    torch.testing.assert_close(info_nce(I, T2, 2.0, ids), info_nce(I, T2, 2.0))


def test_temperature_starts_at_one_over_0_07_and_is_clamped_at_100():
    model = CLIPModel(TINY)
    assert math.exp(float(model.scale().detach())) == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(1e4)
    assert math.exp(float(model.scale().detach())) == pytest.approx(100.0, rel=1e-6)
    x, text, mask = torch.randn(4, 3, 16, 16), torch.randn(4, 5, 384), torch.ones(4, 5, dtype=torch.bool)
    image_emb, text_emb, scale = model(x, text, mask)
    loss, logs = CLIPLoss()(model, {"x": x, "text": text, "text_mask": mask}, torch.Generator())
    torch.testing.assert_close(loss, info_nce(image_emb, text_emb, math.log(100.0)))
    assert logs["logit_scale"] == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_embeddings_have_unit_norm_and_an_empty_caption_is_finite(pool):
    model = CLIPModel(TINY.replace(pool=pool))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2] = False  # the empty caption: no tokens
    image_emb = model.encode_image(torch.rand(3, 3, 16, 16) * 2 - 1)
    text_emb = model.encode_text(torch.randn(3, 6, 384), mask)
    assert image_emb.shape == text_emb.shape == (3, 16)
    torch.testing.assert_close(image_emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(text_emb.norm(dim=1), torch.ones(3))
    # masked tokens are ignored
    text = torch.randn(3, 6, 384)
    changed = text.clone()
    changed[1, 3:] = 100.0
    torch.testing.assert_close(model.encode_text(text, mask), model.encode_text(changed, mask))


def test_recall_at_k_on_a_hand_made_similarity():
    # 4 images, 3 distinct captions; images 0 and 1 share caption 0
    sim = torch.tensor([[0.9, 0.1, 0.5],
                        [0.5, 0.8, 0.3],
                        [0.3, 0.7, 0.1],
                        [0.4, 0.6, 0.2]])
    r = recall_from_similarity(sim, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert r["i2t_recall@1"] == 0.5 and r["i2t_recall@2"] == 0.75    # hits: images 0, 2; then also 1
    assert r["t2i_recall@1"] == 0.5 and r["t2i_recall@2"] == 0.75    # caption 0 via image 0; caption 1 at 2
    assert r["t2i_chance@1"] == pytest.approx(0.375) and r["t2i_chance@2"] == pytest.approx(2 / 3)
    assert r["i2t_chance@1"] == pytest.approx(1 / 3) and r["chance@1"] == 0.25
    assert (r["n_images"], r["n_captions"]) == (4, 3)


class OneHot(torch.nn.Module):
    """A perfect 'model': image i (a constant image of value i) and caption "c{i}" embed to e_i."""

    def __init__(self, k):
        super().__init__()
        self.k, self.dummy = k, torch.nn.Parameter(torch.zeros(()))

    def encode_image(self, x):
        return F.one_hot(x[:, 0, 0, 0].round().long(), self.k).float()

    def encode_text(self, text, mask):
        return F.one_hot(text[:, 0, 0].long(), self.k).float()


class Table:
    def condition(self, prompts):
        ids = torch.tensor([float(p[1:]) for p in prompts])
        return {"text": ids[:, None, None].expand(-1, 2, 3), "text_mask": torch.ones(len(prompts), 2, dtype=torch.bool)}


def test_metrics_of_a_perfect_model():
    model, images = OneHot(5), torch.arange(5.0)[:, None, None, None].expand(-1, 1, 4, 4)
    captions = [f"c{i}" for i in range(5)]
    r = retrieval_recall(model, images, captions, Table(), ks=(1,))
    assert r["t2i_recall@1"] == r["i2t_recall@1"] == 1.0 and r["chance@1"] == 0.2
    assert zero_shot_accuracy(model, images, torch.arange(5), [[c, c] for c in captions], Table()) == 1.0
    assert clip_score(model, images, captions, Table()) == pytest.approx(100.0)
    assert clip_score(model, images, captions[1:] + captions[:1], Table()) == pytest.approx(0.0)


def test_a_tiny_clip_learns_to_match_eight_pairs():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images, text = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1, torch.randn(8, 4, 384, generator=g)
    mask = torch.ones(8, 4, dtype=torch.bool)
    model = CLIPModel(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = info_nce(*model(images, text, mask))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(text, mask).T
    r = recall_from_similarity(sim, torch.arange(8), ks=(1,))
    assert r["t2i_recall@1"] == r["i2t_recall@1"] == 1.0


def test_presets_are_clip_configs_and_check_their_shapes():
    for make in (fmnist_clip, shapes_clip, tiny_clip):
        cfg = make()
        assert is_clip_config(cfg.to_dict()) and CLIPRunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="in_channels"):
        apply_overrides(shapes_clip(), ["clip.in_channels=1"])
    with pytest.raises(ValueError, match="pool"):
        apply_overrides(shapes_clip(), ["clip.pool=max"])
    assert [len(p) for p in fmnist_class_prompts()] == [15] * 10


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTDIFF_CACHE", str(root / "cache"))
        summary = train_clip_run(tiny_clip(), root / "run", cpu=True)
        yield root / "run", summary


def test_tiny_clip_trains_reloads_with_equal_embeddings_and_evaluates(tiny_run):
    run, summary = tiny_run
    assert summary["steps"] == 4 and math.isfinite(summary["final_loss"])
    assert json.loads((run / "config.json").read_text())["task"] == "clip"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and "logit_scale" in records[-1]
    model, cfg, encoder = load_clip(run / "checkpoint")
    assert cfg == tiny_clip() and not model.training
    state = load_checkpoint(run / "checkpoint", trainer_state=False)
    again = CLIPModel(cfg.clip)
    again.load_state_dict(state.ema_state)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    prompts = ["a small red circle in the center", "a large blue square in the top left", ""]
    cond = encoder.condition(prompts)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), again.eval().encode_image(x))
        torch.testing.assert_close(model.encode_text(cond["text"], cond["text_mask"]),
                                   again.encode_text(cond["text"], cond["text_mask"]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTDIFF_CACHE", str(run.parent / "cache"))
        report = evaluate_clip(model, cfg, n=32, encoder=encoder)
    assert report["shapes_n_images"] == 32 and report["shapes_recall_chance"] == pytest.approx(1 / 32)
    for k in (1, 5):
        assert 0.0 <= report[f"shapes_t2i_recall_at_{k}"] <= 1.0 and 0.0 <= report[f"shapes_i2t_recall_at_{k}"] <= 1.0
    assert -100.0 <= report["shapes_clip_score_real"] <= 100.0


def test_load_clip_refuses_another_kind_of_checkpoint(tmp_path):
    from latentdiff.io.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", {"task": "autoencoder"}, {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a CLIP checkpoint"):
        load_clip(tmp_path / "ckpt", text_encoder=False)


def test_clip_score_of_a_text_to_image_model_through_the_cli(tiny_run, tmp_path, capsys):
    from clirun import run_cli
    from latentdiff.cli.main import main

    run, _ = tiny_run
    main(["train", "--preset", "tiny-t2i", "--out", str(tmp_path / "t2i"), "--set", "train.max_steps=2"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle in the center\na large blue square left of a small green triangle\n")
    out = tmp_path / "score.json"
    code, _, err = run_cli(capsys, ["eval", "clip-score", str(tmp_path / "t2i" / "checkpoint"), "--clip",
                                    str(run / "checkpoint"), "--prompts", str(prompts), "--n-per-prompt", "2",
                                    "--steps", "2", "--json", str(out)])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert -100 <= report["clip_score"] <= 100 and report["n_prompts"] == 2 and report["n_per_prompt"] == 2
    code, _, err = run_cli(capsys, ["eval", "clip-score", str(tmp_path / "t2i" / "checkpoint")])
    assert code == 1 and "--clip" in err
