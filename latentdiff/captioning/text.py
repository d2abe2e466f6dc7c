"""Captions as token ids and back, the captioner's teacher-forcing loss, and greedy and beam decoding.

A caption of style s is the sequence [<s>, w_1, ..., w_n, <eos>] padded with <pad> (id 0) to
``max_length``; the model reads all but the last position and predicts all but the first
(teacher forcing), so the loss is the cross-entropy of w_1 .. w_n, <eos> given the prefixes, the
padding ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.captioning.model import EOS, FIRST_WORD, PAD, STYLES, CaptionerConfig


def build_vocab(captions: list[str]) -> tuple[str, ...]:
    """The sorted distinct words of ``captions``."""
    return tuple(sorted({w for c in captions for w in c.split()}))


def style_id(cfg: CaptionerConfig, style: str) -> int:
    if style not in STYLES:
        raise ValueError(f"caption style must be one of {', '.join(STYLES)}, got {style!r}")
    return cfg.tokens.index(f"<{style}>")


def encode_captions(cfg: CaptionerConfig, captions: list[str], style: str) -> torch.Tensor:
    """Captions -> token ids (N, max_length) int64: [<style>, words, <eos>, <pad> ...]. A word
    outside the vocabulary, or a caption too long, is a ValueError naming it."""
    index = {t: i for i, t in enumerate(cfg.tokens)}
    out = torch.zeros(len(captions), cfg.max_length, dtype=torch.long)  # <pad> is 0
    for row, caption in enumerate(captions):
        words = caption.split()
        if len(words) + 2 > cfg.max_length:
            raise ValueError(f"caption {caption!r} has {len(words)} words; at most {cfg.max_length - 2} fit")
        unknown = [w for w in words if w not in index]
        if unknown:
            raise ValueError(f"caption {caption!r}: word {unknown[0]!r} is not in the captioner's vocabulary")
        ids = [style_id(cfg, style), *(index[w] for w in words), index[EOS]]
        out[row, :len(ids)] = torch.tensor(ids)
    return out


def decode_ids(cfg: CaptionerConfig, ids: torch.Tensor) -> list[str]:
    """Token ids (N, T) after the style token -> captions: the words up to the first <eos>."""
    tokens, out = cfg.tokens, []
    for row in ids.tolist():
        words = []
        for i in row:
            if tokens[i] in (EOS, PAD):
                break
            if not tokens[i].startswith("<"):
                words.append(tokens[i])
        out.append(" ".join(words))
    return out


def caption_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing cross-entropy: logits (B, T - 1, V) of the prefixes tokens[:, :-1], targets
    tokens[:, 1:], <pad> targets ignored; the mean over the real target tokens."""
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=0)


class CaptionLoss:
    """``loss_fn(model, batch, generator) -> (loss, logs)`` for the trainer: ``batch["tokens"]`` (B, K, T)
    holds K captions (one per style) of each input ``batch["x"]`` (images (B, C, S, S), or an
    upsampler's short prompts (B, T)); the input is encoded once and every caption decoded against
    it. With word detectors (``Captioner`` with ``cfg.concepts``) their binary cross-entropy against
    the words of the item's captions is added. ``styles``: the indices of the K styles trained (an upsampler
    writes the descriptive one).

    ``input_noise`` q: each input word after the style token is replaced, with probability q, by the
    word at the same position of another caption of the batch in the same style (a random row, drawn
    with ``generator``); the targets stay. The decoder then cannot lean on the words before to name
    the next (a colour seen only with two of the shapes to rule out the third), and reads the image
    for it: word dropout (Bowman et al. 2016) with in-distribution words instead of a mask."""

    def __init__(self, styles: tuple[int, ...] | None = None, input_noise: float = 0.0):
        if not 0 <= input_noise < 1:
            raise ValueError(f"input_noise must be in [0, 1), got {input_noise}")
        self.styles, self.input_noise = styles, input_noise

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        tokens = batch["tokens"] if self.styles is None else batch["tokens"][:, list(self.styles)]
        K = tokens.shape[1]
        flat = tokens.flatten(0, 1)
        inputs = noisy_inputs(tokens, self.input_noise, generator).flatten(0, 1)
        if hasattr(model, "encode_with_concepts"):
            context, detected = model.encode_with_concepts(batch["x"])
        else:
            context, detected = model.encode(batch["x"]), None
        logits = model.decode(repeat_context(context, K), inputs)
        loss = caption_loss(logits, flat)
        if detected is not None:
            present = words_present(tokens, detected.shape[1])
            loss = loss + F.binary_cross_entropy_with_logits(detected.float(), present)
        real = flat[:, 1:] != 0
        accuracy = ((logits.argmax(-1) == flat[:, 1:]) | ~real).all(dim=1).float().mean()
        return loss, {"caption_exact": float(accuracy)}


def words_present(captions: torch.Tensor, V: int) -> torch.Tensor:
    """(B, V) float: 1 where a word occurs in any of an item's captions (B, K, T); specials 0."""
    present = torch.zeros(len(captions), V, device=captions.device)
    present.scatter_(1, captions.flatten(1), 1.0)
    present[:, :FIRST_WORD] = 0.0
    return present


def noisy_inputs(captions: torch.Tensor, q: float, generator: torch.Generator) -> torch.Tensor:
    """The teacher-forcing inputs captions[:, :, :-1] (B, K, T - 1), each word after the style token
    swapped with probability q for the word at the same position and style of a random row of the
    batch, where that row has a word there too (``CaptionLoss``)."""
    inputs = captions[:, :, :-1]
    if q == 0:
        return inputs
    B, K, T = inputs.shape
    rows = torch.randint(0, B, (B, K, T), generator=generator).to(inputs.device)
    other = inputs.gather(0, rows)
    word = inputs >= FIRST_WORD
    word[:, :, 0] = False  # the style token stays
    swap = (torch.rand(B, K, T, generator=generator).to(inputs.device) < q) & word & (other >= FIRST_WORD)
    return torch.where(swap, other, inputs)


def not_words(cfg: CaptionerConfig, device) -> torch.Tensor:
    """(V,) bool: the ids a caption never continues with (<pad> and the style tokens)."""
    return torch.tensor([t == PAD or (t.startswith("<") and t != EOS) for t in cfg.tokens], device=device)


def repeat_context(context, k: int):
    """An encoder's output (a tensor, or the upsampler's (states, mask)) with each row repeated k times."""
    if isinstance(context, tuple):
        return tuple(c.repeat_interleave(k, dim=0) for c in context)
    return context.repeat_interleave(k, dim=0)


@torch.no_grad()
def decode_loop(model: nn.Module, inputs: torch.Tensor, style: str, pick) -> list[str]:
    """One token at a time from the style token to <eos> (or max_length): ``pick(logits (B, V)) -> (B,)``
    chooses each next token from the logits, the ids a caption never continues with excluded."""
    cfg = model.cfg
    context = model.encode(inputs)
    seq = torch.full((len(inputs), 1), style_id(cfg, style), dtype=torch.long, device=inputs.device)
    done = torch.zeros(len(inputs), dtype=torch.bool, device=inputs.device)
    eos, banned = cfg.tokens.index(EOS), not_words(cfg, inputs.device)
    for _ in range(cfg.max_length - 1):
        nxt = pick(model.decode(context, seq)[:, -1].float().masked_fill(banned, float("-inf")))
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        seq = torch.cat([seq, nxt[:, None]], 1)
        done |= nxt == eos
        if done.all():
            break
    return decode_ids(cfg, seq[:, 1:].cpu())


def greedy(model: nn.Module, inputs: torch.Tensor, style: str) -> list[str]:
    """The most likely next word at every step (``inputs``: images for a captioner, short prompts' ids
    for an upsampler)."""
    return decode_loop(model, inputs, style, lambda logits: logits.argmax(-1))


def sample(model: nn.Module, inputs: torch.Tensor, style: str, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> list[str]:
    """Every next word drawn from softmax(logits / temperature) with ``generator`` (CPU): how the prompt
    upsampler fills in what a short prompt leaves open."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def draw(logits):
        probs = (logits / temperature).softmax(-1).cpu()
        return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)

    return decode_loop(model, inputs, style, draw)


@torch.no_grad()
def beam(model: nn.Module, images: torch.Tensor, style: str, width: int = 3) -> list[str]:
    """Beam search: the ``width`` most likely prefixes (summed log-probabilities) kept at every step;
    a finished beam (<eos>) keeps its score; the best finished caption of each image."""
    cfg = model.cfg
    B, eos = len(images), cfg.tokens.index(EOS)
    context = repeat_context(model.encode(images), width)                           # (B k, N, dim)
    seq = torch.full((B * width, 1), style_id(cfg, style), dtype=torch.long, device=images.device)
    score = torch.full((B, width), float("-inf"), device=images.device)
    score[:, 0] = 0.0                                                               # one live beam at the start
    done = torch.zeros(B * width, dtype=torch.bool, device=images.device)
    banned = not_words(cfg, images.device)
    for _ in range(cfg.max_length - 1):
        logp = model.decode(context, seq)[:, -1].float().masked_fill(banned, float("-inf")).log_softmax(-1)
        # a finished beam extends only by <pad> (id 0) at no cost
        logp = torch.where(done[:, None], torch.full_like(logp, float("-inf")), logp)
        logp[done, 0] = 0.0
        total = (score.flatten()[:, None] + logp).view(B, -1)                       # (B, k V)
        score, pick = total.topk(width, dim=1)
        parent = pick // logp.shape[1] + torch.arange(B, device=images.device)[:, None] * width
        word = (pick % logp.shape[1]).flatten()
        seq = torch.cat([seq[parent.flatten()], word[:, None]], 1)
        done = done[parent.flatten()] | (word == eos)
        if done.all():
            break
    best = score.argmax(1) + torch.arange(B, device=images.device) * width
    return decode_ids(cfg, seq[best, 1:].cpu())
