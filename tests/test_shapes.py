"""The procedural ``shapes`` dataset and the exact rule-based reader behind prompt adherence."""

import pytest
import torch

from latentdiff.data.shapes import HELD_OUT_PAIRS, ShapesDataset, caption_of, held_out_prompts, parse_prompt
from latentdiff.eval.adherence import read_scene, score


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(n=1000, split="train", seed=3), ShapesDataset(n=1000, split="test", seed=3)


def test_generation_is_a_function_of_seed_split_and_index(data):
    again = ShapesDataset(n=10, split="train", seed=3)
    assert torch.equal(again.images, data[0].images[:10]) and again.captions == data[0].captions[:10]
    assert not torch.equal(ShapesDataset(n=10, split="train", seed=4).images, again.images)


def test_the_reader_reads_dataset_images_back_at_99_percent(data):
    results = [score(d.captions[i], d.get_batch(torch.tensor([i]))["x"][0]) for d in data for i in range(len(d))]
    assert sum(r["all_correct"] for r in results) / len(results) >= 0.99


def test_captions_parse_back_to_their_attributes(data):
    for (objs, relation), caption in zip(data[0].attributes[:200], data[0].captions[:200]):
        wanted, rel = parse_prompt(caption)
        assert rel == relation and [w["colour"] for w in wanted] == [o.colour for o in objs]
        assert caption_of(objs, relation) == caption
    with pytest.raises(ValueError, match="grammar"):
        parse_prompt("a purple elephant")
    with pytest.raises(ValueError, match="grammar"):  # a caption cut short (a captioner's) is named, not an IndexError
        parse_prompt("a small red circle left of a small")


def test_held_out_pairs_never_occur_in_training_and_make_the_held_out_prompts(data):
    pairs = {(o.colour, o.shape) for objs, _ in data[0].attributes for o in objs}
    assert not pairs & set(HELD_OUT_PAIRS)
    prompts = held_out_prompts(n=20)
    assert len(set(prompts)) == 20
    for p in prompts:
        wanted, _ = parse_prompt(p)
        assert any((w["colour"], w["shape"]) in set(HELD_OUT_PAIRS) for w in wanted)


def test_a_blank_image_matches_nothing():
    assert read_scene(torch.zeros(3, 32, 32)) == []
    assert not score("a small red circle in the center", torch.zeros(3, 32, 32))["all_correct"]
