"""The frozen text encoder: offline MiniLM, masked per-token states, truncation, clear errors."""

import warnings

import pytest
import torch

from latentdiff.conditioning import TextEncoder


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_length=12)


def test_loads_offline_and_returns_masked_per_token_states(encoder, monkeypatch):
    prompts = ["a small red circle in the center", "shapes", ""]
    tokens, pooled, mask = encoder.encode(prompts)
    assert tokens.shape == (3, 12, 384) and pooled.shape == (3, 384) and mask.dtype == torch.bool
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in prompts[:2]] + [0]  # "" has no tokens
    assert mask.sum(1).tolist() == lengths  # [CLS] ... [SEP], then padding masked out
    alone, pooled_alone, _ = encoder.encode(["shapes"])
    # padding never changes a prompt's states: the short prompt alone equals it inside the batch
    n = lengths[1]
    torch.testing.assert_close(tokens[1, :n], alone[0, :n], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled[1], pooled_alone[0], rtol=1e-4, atol=1e-4)
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.parameters())


def test_long_prompts_are_truncated_with_one_warning(encoder):
    long = "a small red circle left of a large blue square " * 4
    encoder._warned = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens, _, mask = encoder.encode([long, long])
        encoder.encode([long])
    assert tokens.shape[1] == 12 and bool(mask.all())
    assert sum("truncated" in str(w.message) for w in caught) == 1


def test_a_missing_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        TextEncoder(tmp_path / "no_such_encoder")


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_any_encoder_on_disk_loads_by_path(kind, encoder, tmp_path):
    """A CLIP text model and a T5 encoder saved locally (tiny, random, with MiniLM's tokenizer)
    load by path through the same interface; their width sets D."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    vocab = encoder.tokenizer.vocab_size
    if kind == "clip":
        model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32))
    else:
        model = T5EncoderModel(T5Config(vocab_size=vocab, d_model=24, d_kv=8, d_ff=48, num_layers=1, num_heads=3))
    model.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    other = TextEncoder(tmp_path, max_length=10)
    tokens, pooled, mask = other.encode(["a small red circle in the center", ""])
    width = 32 if kind == "clip" else 24
    assert tokens.shape == (2, 10, width) and pooled.shape == (2, width)
    assert bool(mask[0].any()) and not bool(mask[1].any()) and torch.isfinite(tokens).all()
