"""The DALL·E 3-style captioner: its loss against cross-entropy written out, token round trips, greedy
and beam decoding of a captioner that memorised a caption, the labelled share (no exact caption
outside it reaches training), and train -> eval through the CLI."""

import json
import math

import pytest
import torch

from clirun import run_cli
from latentdiff.captioning import (Captioner, CaptionerConfig, LabelledShare, beam, build_vocab, caption_loss,
                                   decode_ids, encode_captions, greedy, labelled_indices, style_captions)
from latentdiff.data import DataConfig, build_dataset
from latentdiff.pipelines.captioning import caption_checks
from latentdiff.presets import get_preset

WORDS = ("a", "circle", "red", "small", "square")
CFG = CaptionerConfig(image_size=16, width=8, stage_mult=(1, 2), norm_groups=4, dim=32, layers=1, heads=2,
                      max_length=8, vocab=WORDS)


def test_caption_loss_is_cross_entropy_over_the_real_targets():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.5, 0.5, 3.0], [1.0, 1.0, 1.0]]])   # (1, T - 1 = 3, V = 3)
    tokens = torch.tensor([[2, 1, 2, 0]])   # targets 1, 2, <pad>: the last position is ignored

    def nll(row, target):
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    want = (nll([2.0, 0.0, 1.0], 1) + nll([0.5, 0.5, 3.0], 2)) / 2
    assert caption_loss(logits, tokens).item() == pytest.approx(want, rel=1e-6)


def test_captions_round_trip_through_token_ids_and_bad_words_are_named():
    ids = encode_captions(CFG, ["a small red circle", "a square"], "descriptive")
    assert ids.shape == (2, 8) and ids[0, 0] == CFG.tokens.index("<descriptive>")
    assert ids[1, 3] == CFG.tokens.index("<eos>") and ids[1, 4] == 0  # <eos>, then <pad>
    assert decode_ids(CFG, ids[:, 1:]) == ["a small red circle", "a square"]
    with pytest.raises(ValueError, match="'blue'"):
        encode_captions(CFG, ["a blue circle"], "short")
    with pytest.raises(ValueError, match="at most 6"):
        encode_captions(CFG, ["a a a a a a a"], "short")
    assert build_vocab(["b a", "a c"]) == ("a", "b", "c")


def test_a_captioner_that_memorised_a_caption_decodes_it_greedily_and_by_beam():
    torch.manual_seed(0)
    model = Captioner(CFG)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    target = encode_captions(CFG, ["a small red circle"], "descriptive")
    other = encode_captions(CFG, ["a square"], "short")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = caption_loss(model(image, target[:, :-1]), target) + caption_loss(model(image, other[:, :-1]), other)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert greedy(model, image, "descriptive") == ["a small red circle"]
    assert beam(model, image, "descriptive", width=3) == ["a small red circle"]
    assert greedy(model, image, "short") == ["a square"]  # the style token chooses the caption


def test_only_the_labelled_share_reaches_the_captioner():
    base = build_dataset(DataConfig(name="shapes", image_size=16, channels=3, n=200), "train")
    index = labelled_indices(len(base), 0.05, seed=0)
    assert len(index) == 10 and torch.equal(index, labelled_indices(200, 0.05, seed=0))
    assert len(set(index.tolist())) == 10 and not torch.equal(index, labelled_indices(200, 0.05, seed=1))
    words = build_vocab([c for s in ("short", "descriptive") for c in style_captions(base, index, s)])
    cfg = CFG.replace(vocab=words, max_length=16)
    share = LabelledShare(base, index, cfg)
    assert len(share) == 10 and share.captions == [base.captions[i] for i in index.tolist()]
    batch = share.get_batch(torch.arange(10))          # every item of the dataset object
    assert torch.equal(batch["x"], base.get_batch(index)["x"])
    seen = set(decode_ids(cfg, batch["tokens"][:, 1, 1:]))   # the descriptive captions it trains on
    assert seen == set(share.captions)
    outside = {base.captions[i] for i in range(200) if i not in set(index.tolist())} - set(share.captions)
    assert outside and not outside & seen


def test_mirrored_items_are_the_flipped_images_with_the_flipped_scenes_captions():
    import numpy as np

    from latentdiff.data.shapes import Obj, caption_of, draw, mirrored

    objs, relation = [Obj("triangle", "red", "large", 1, 0), Obj("circle", "blue", "small", 1, 2)], "left of"
    flipped, swapped = mirrored(objs, relation)
    assert caption_of(flipped, swapped) == "a large red triangle right of a small blue circle"
    plain = draw(objs, 32, np.random.default_rng(3), textured=False)
    assert np.array_equal(plain[:, ::-1], draw(flipped, 32, np.random.default_rng(3), textured=False))
    base = build_dataset(DataConfig(name="shapes", image_size=16, channels=3, n=200), "train")
    index = labelled_indices(len(base), 0.05, seed=0)
    words = build_vocab([c for s in ("short", "descriptive") for c in style_captions(base, index, s)])
    share = LabelledShare(base, index, CFG.replace(vocab=words, max_length=16), mirror=True)
    assert len(share) == 20 and share.captions == [base.captions[i] for i in index.tolist()]
    batch = share.get_batch(torch.arange(10, 20))
    assert torch.equal(batch["x"], base.get_batch(index)["x"].flip(-1))
    want = [caption_of(*mirrored(*base.attributes[i])) for i in index.tolist()]
    assert decode_ids(CFG.replace(vocab=words, max_length=16), batch["tokens"][:, 1, 1:]) == want


def test_input_noise_swaps_words_for_same_position_words_of_the_batch_at_rate_q():
    from latentdiff.captioning.text import noisy_inputs

    g = torch.Generator().manual_seed(0)
    captions = torch.randint(5, 40, (400, 2, 12), generator=g)
    captions[:, :, 0] = torch.tensor([2, 3])       # style tokens
    captions[:, :, 9], captions[:, :, 10:] = 1, 0    # <eos>, then <pad>
    inputs = noisy_inputs(captions, 0.3, torch.Generator().manual_seed(1))
    assert inputs.shape == (400, 2, 11) and torch.equal(noisy_inputs(captions, 0.0, g), captions[:, :, :-1])
    kept = captions[:, :, :-1]
    assert torch.equal(inputs[:, :, 0], kept[:, :, 0]) and torch.equal(inputs[:, :, 9:], kept[:, :, 9:])
    for k in range(2):
        for t in range(1, 9):
            assert set(inputs[:, k, t].tolist()) <= set(kept[:, k, t].tolist())  # same style, same position
    changed = float((inputs != kept)[:, :, 1:9].float().mean())
    expect = 0.3 * (1 - 1 / 35)  # a swap for an equal word changes nothing
    assert abs(changed - expect) < 4 * math.sqrt(expect * (1 - expect) / (400 * 2 * 8))
    again = noisy_inputs(captions, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(inputs, again)


def test_word_detectors_add_their_log_prior_to_the_words_and_their_loss_to_the_caption_loss():
    import torch.nn.functional as F

    from latentdiff.captioning.text import CaptionLoss, words_present

    captions = torch.tensor([[[2, 5, 6, 1, 0], [3, 7, 1, 0, 0]]])           # (B 1, K 2, T 5)
    assert words_present(captions, 9).tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 0]]
    torch.manual_seed(0)
    cfg = CFG.replace(concepts=True, concept_prior=2.0)
    model = Captioner(cfg)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    (tokens, detected), logits = model.encode_with_concepts(images)
    assert tokens.shape == (2, 8 * 8 + 1, 32) and torch.equal(detected, logits.detach())
    ids = encode_captions(cfg, ["a small red circle", "a square"], "descriptive")
    fused = model.decode((tokens, detected), ids[:, :-1])
    plain = model.decode(tokens, ids[:, :-1])
    words = torch.arange(len(cfg.tokens)) >= 4                                # after <pad>, <eos>, the styles
    want = plain + 2.0 * F.logsigmoid(detected)[:, None, :] * words
    assert torch.allclose(fused, want, atol=1e-6) and torch.equal(fused[..., :4], plain[..., :4])
    batch = {"x": images, "tokens": torch.stack([ids, encode_captions(cfg, ["a red circle", "a square"], "short")], 1)}
    loss, _ = CaptionLoss()(model, batch, torch.Generator().manual_seed(0))
    flat = batch["tokens"].flatten(0, 1)
    context = tuple(c.repeat_interleave(2, dim=0) for c in (tokens, detected))
    want = caption_loss(model.decode(context, flat[:, :-1]), flat) + F.binary_cross_entropy_with_logits(
        logits, words_present(batch["tokens"], len(cfg.tokens)))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="concept_prior needs captioner.concepts"):
        CFG.replace(concept_prior=1.0)


def test_canonical_captions_and_their_turned_round_restatements_describe_the_same_image():
    from latentdiff.data.shapes import canonical, caption_of, turned_caption
    from latentdiff.eval.adherence import score
    from latentdiff.pipelines.captioning import restated_at_random

    test = build_dataset(DataConfig(name="shapes", image_size=32, channels=3, n=40), "test")
    two = [i for i in range(40) if len(test.attributes[i][0]) == 2]
    assert len(two) >= 10
    for i in two:
        image = test.get_batch(torch.tensor([i]))["x"][0]
        first = caption_of(*canonical(*test.attributes[i]))
        assert " right of " not in first and " below " not in first
        assert score(first, image)["all_correct"] and score(turned_caption(first), image)["all_correct"]
        assert turned_caption(turned_caption(first)) == first
    one = test.captions[next(i for i in range(40) if len(test.attributes[i][0]) == 1)]
    assert turned_caption(one) == one and turned_caption("not a caption") == "not a caption"
    captions = [caption_of(*canonical(*test.attributes[two[0]]))] * 2000
    out = restated_at_random(captions, seed=0)
    share = sum(c != captions[0] for c in out) / len(out)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 2000) and out == restated_at_random(captions, seed=0)


def test_a_caption_outside_the_grammar_fails_every_attribute():
    test = build_dataset(DataConfig(name="shapes", image_size=32, channels=3, n=4), "test")
    image = test.get_batch(torch.tensor([0]))["x"][0]
    bad = caption_checks("small red", image, len(test.attributes[0][0]))
    assert not bad["all_correct"] and not any(bad["checks"].values())
    assert caption_checks(test.captions[0], image, len(test.attributes[0][0]))["all_correct"]


def test_a_tiny_captioner_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    run = tmp_path / "captioner"
    code, _, err = run_cli(capsys, ["train", "--preset", "tiny-captioner", "--out", str(run)])
    assert code == 0, err
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    cfg = get_preset("tiny-captioner")
    base = build_dataset(cfg.data, "train")
    index = labelled_indices(len(base), cfg.labelled_share, cfg.share_seed)
    want = build_vocab([c for s in ("short", "descriptive") for c in style_captions(base, index, s)])
    assert tuple(config["captioner"]["vocab"]) == want  # the vocabulary comes from the labelled share
    out = tmp_path / "eval.json"
    code, _, err = run_cli(capsys, ["eval", str(run / "checkpoint"), "--n", "12", "--beam", "2", "--json", str(out)])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["n_images"] == 12 and report["n_single"] + report["n_two"] == 12
    assert 0 <= report["single_all_correct"] <= 1 and len(report["examples"]) == 8


def text_batch(B, L=3, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"x": torch.zeros(B, 1), "text": torch.randn(B, L, D, generator=g),
             "text_mask": torch.ones(B, L, dtype=torch.bool), "pooled": torch.randn(B, D, generator=g)}
    batch |= {"text_original": -batch["text"], "text_mask_original": torch.zeros(B, L, dtype=torch.bool),
              "pooled_original": -batch["pooled"]}
    return batch


def test_the_blend_draws_synthetic_captions_at_rate_p_reproducibly():
    from latentdiff.objectives.blend import blend_captions

    batch = text_batch(4000)
    out, synthetic = blend_captions(batch, 0.8, torch.Generator().manual_seed(5))
    share = float(synthetic.float().mean())
    assert abs(share - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 4000)  # 4 sigma of the binomial
    assert torch.equal(out["text"][synthetic], batch["text"][synthetic])
    assert torch.equal(out["text"][~synthetic], batch["text_original"][~synthetic])
    assert torch.equal(out["text_mask"], synthetic[:, None].expand(-1, 3))
    assert not any(k.endswith("_original") for k in out)
    again, synthetic2 = blend_captions(batch, 0.8, torch.Generator().manual_seed(5))
    assert torch.equal(synthetic, synthetic2) and torch.equal(again["pooled"], out["pooled"])
    _, other = blend_captions(batch, 0.8, torch.Generator().manual_seed(6))
    assert not torch.equal(other, synthetic)


def test_caption_sources_alt_text_and_refusals(tmp_path):
    from latentdiff.data.captions import data_key, save_recaptions

    data = DataConfig(name="shapes", image_size=16, channels=3, n=12)
    alt = build_dataset(data.replace(captions="alt"), "train")
    exact = build_dataset(data, "train")
    assert alt.captions == exact.alt_texts and alt.captions != exact.captions
    assert build_dataset(data.replace(captions="alt"), "test").captions == build_dataset(data, "test").captions
    path = save_recaptions(tmp_path / "r.json", ["a red circle"] * 10, {"data": data_key(data), "split": "train"})
    with pytest.raises(ValueError, match=r"covers 10 of the 12 training items \(2 missing\)"):
        build_dataset(data.replace(captions=f"recaption:{path}"), "train")
    with pytest.raises(ValueError, match="other data"):
        build_dataset(data.replace(captions=f"recaption:{path}", seed=3), "train")
    ok = build_dataset(data.replace(n=10, captions=f"recaption:{path}"), "train")
    assert ok.captions == ["a red circle"] * 10 and ok.original_captions == exact.alt_texts[:10]
    with pytest.raises(ValueError, match="data.captions must be one of"):
        DataConfig(captions="synthetic")


def test_captioner_to_recaption_to_text_to_image_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LATENTDIFF_CACHE", str(tmp_path / "cache"))
    cap = tmp_path / "captioner"
    code, _, err = run_cli(capsys, ["train", "--preset", "tiny-captioner", "--out", str(cap),
                                    "--set", "data.image_size=32", "captioner.image_size=32"])
    assert code == 0, err
    code, _, err = run_cli(capsys, ["recaption", str(cap / "checkpoint"), "--preset", "tiny-t2i",
                                    "--set", "data.image_size=16"])
    assert code != 0 and "32 px" in err and "16 px" in err  # a captioner of another size: both named
    code, stdout, err = run_cli(capsys, ["recaption", str(cap / "checkpoint"), "--preset", "tiny-t2i"])
    assert code == 0, err
    path = stdout.split("recaption:")[-1].strip()
    stored = json.loads(open(path).read())
    assert stored["provenance"]["style"] == "descriptive" and len(stored["captions"]) == 64
    assert stored["provenance"]["captioner"] == str(cap / "checkpoint")
    run = tmp_path / "t2i"
    code, _, err = run_cli(capsys, ["train", "--preset", "tiny-t2i", "--out", str(run),
                                    "--set", f"data.captions=recaption:{path}", "data.caption_blend=0.5"])
    assert code == 0, err
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["synthetic_share"] <= 1 for r in logs if "synthetic_share" in r)
    up = tmp_path / "upsampler"
    code, _, err = run_cli(capsys, ["train", "--preset", "tiny-upsampler", "--out", str(up)])
    assert code == 0, err
    code, stdout, err = run_cli(capsys, ["sample", str(run / "checkpoint"), "--prompt", "a red circle",
                                         "--upsample-prompt", str(up / "checkpoint"), "--n", "2", "--steps", "2",
                                         "--out", str(tmp_path / "s.png")])
    assert code == 0, err
    assert "upsampled: 'a red circle' -> " in err and (tmp_path / "s.png").exists()


def test_an_upsampler_that_memorised_a_rewrite_returns_it_and_samples_reproducibly():
    from latentdiff.captioning import PromptUpsampler, sample
    from latentdiff.pipelines.captioning import upsample_prompts

    torch.manual_seed(0)
    model = PromptUpsampler(CFG)
    source = encode_captions(CFG, ["a red circle"], "short")
    target = encode_captions(CFG, ["a small red circle"], "descriptive")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = caption_loss(model(source, target[:, :-1]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert greedy(model, source, "descriptive") == ["a small red circle"]
    assert upsample_prompts(model, ["a red circle"], temperature=0.1) == ["a small red circle"]
    many = source.expand(50, -1)
    hot = dict(temperature=5.0)
    first = sample(model, many, "descriptive", generator=torch.Generator().manual_seed(1), **hot)
    assert first == sample(model, many, "descriptive", generator=torch.Generator().manual_seed(1), **hot)
    assert len(set(first)) > 1  # at a high temperature the draws differ
    with pytest.raises(ValueError, match="'blue'"):
        upsample_prompts(model, ["a blue circle"])
