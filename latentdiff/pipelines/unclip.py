"""Orchestration for unCLIP (DALL·E 2, Ramesh et al. 2022): the diffusion prior (train, load, sample
image embeddings from captions), the decoder's training parts, text -> prior -> decoder, image
variations and interpolations. No maths here (``nn.prior``, ``objectives.unclip``, ``unclip``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from latentdiff.conditioning import text_encoder, text_table
from latentdiff.data import build_dataset
from latentdiff.io.checkpoint import load_run_model, read_config
from latentdiff.nn.prior import PriorTransformer
from latentdiff.objectives.diffusion import DiffusionLoss
from latentdiff.objectives.unclip import DecoderLoss
from latentdiff.pipelines.clip import captions_of, images_for_clip, load_clip
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import (generate, load_model, make_denoiser, samples_in_bf16, sampling_options,
                                            text_encoder_for)
from latentdiff.precond import Denoiser
from latentdiff.presets.unclip import PriorRunConfig
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer
from latentdiff.unclip.data import ImageEmbedded, PriorPairs
from latentdiff.unclip.embeddings import clip_fingerprint, dataset_image_embeds


def clip_with_fingerprint(ckpt: str | Path, recorded: str = ""):
    """The CLIP checkpoint a prior or decoder names -> (model, CLIPRunConfig, fingerprint); refuses a
    checkpoint whose weights are not the ``recorded`` fingerprint (the run was trained on another)."""
    if not ckpt:
        raise ValueError("no CLIP checkpoint given: set clip (a prior) or unclip.clip (a decoder)")
    model, clip_cfg, _ = load_clip(ckpt, text_encoder=False)
    fingerprint = clip_fingerprint(model)
    if recorded and recorded != fingerprint:
        raise ValueError(f"the CLIP checkpoint {ckpt} has changed since this run was trained on it (fingerprint "
                         f"{fingerprint}, the run recorded {recorded})")
    return model, clip_cfg, fingerprint


def train_image_embeds(clip, clip_cfg, fingerprint: str, data_cfg) -> torch.Tensor:
    """Unit CLIP image embeddings (N, D) of a run's training images, from the cache when present."""
    dataset = build_dataset(data_cfg, "train")
    return dataset_image_embeds(clip, fingerprint, dataset, {"data": data_cfg.to_dict(), "split": "train"},
                                lambda x: images_for_clip(x, clip_cfg))


class PriorText:
    """A prior's text encoder for ``Conditioning``: ``condition(prompts)`` -> {"text", "text_mask"}
    (the frozen token states) and "pooled", the unit CLIP text embedding, zero for the empty prompt
    (the dropped condition the prior was trained with)."""

    def __init__(self, clip, encoder):
        self.clip, self.encoder = clip, encoder

    @torch.no_grad()
    def condition(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        rows = self.encoder.condition(list(prompts))
        embeds = self.clip.encode_text(rows["text"], rows["text_mask"])
        empty = torch.tensor([not p.strip() for p in prompts])[:, None]
        return {"text": rows["text"], "text_mask": rows["text_mask"], "pooled": embeds.masked_fill(empty, 0.0)}


@seeded_run
def train_prior_run(cfg: PriorRunConfig, out_dir: str | Path, cpu: bool | None = None) -> dict:
    """Train a diffusion prior into ``out_dir`` (resumes when it holds a checkpoint): the CLIP image
    embeddings of the training images are computed once (cached), every distinct caption's token
    states and CLIP text embedding once; the loss is ``DiffusionLoss`` on sqrt(D) x the image
    embedding (``unclip.data.PriorPairs``)."""
    clip, clip_cfg, fingerprint = clip_with_fingerprint(cfg.clip, cfg.clip_fingerprint)
    if clip_cfg.clip.embed_dim != cfg.prior.embed_dim:
        raise ValueError(f"prior.embed_dim={cfg.prior.embed_dim} but the CLIP model {cfg.clip} embeds in "
                         f"{clip_cfg.clip.embed_dim} dimensions")
    if clip_cfg.text != cfg.text:
        raise ValueError(f"the prior's text config {cfg.text} differs from its CLIP model's {clip_cfg.text}")
    cfg = cfg.replace(clip_fingerprint=fingerprint)
    captions = captions_of(build_dataset(cfg.data, "train"), cfg.data.name)
    table = text_table(cfg.text, captions)
    with torch.no_grad():
        text_embeds = clip.encode_text(table.tokens.float(), table.mask)
    text_embeds[table.ids([""])] = 0.0
    pairs = PriorPairs(train_image_embeds(clip, clip_cfg, fingerprint, cfg.data), captions, table, text_embeds)
    trainer = Trainer(PriorTransformer(cfg.prior), DiffusionLoss(cfg.diffusion), pairs, cfg.train, out_dir,
                      run_config=cfg.to_dict(), cpu=cpu)
    return trainer.train()


def load_prior(ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """A prior checkpoint -> (Denoiser over sqrt(D)-scaled embeddings, PriorRunConfig, PriorText)."""
    net, cfg = load_run_model(ckpt, "prior", "diffusion prior", PriorRunConfig, lambda c: PriorTransformer(c.prior),
                              use_ema)
    clip, _, _ = clip_with_fingerprint(cfg.clip, cfg.clip_fingerprint)
    denoiser = make_denoiser(net.to(device), cfg)
    return denoiser, cfg, PriorText(clip, text_encoder(cfg.text))


@torch.no_grad()
def sample_image_embeds(prior: Denoiser, cfg: PriorRunConfig, text: PriorText, prompts: list[str], *,
                        candidates: int | None = None, seed: int = 0, progress: bool = False,
                        **sampling) -> torch.Tensor:
    """Unit CLIP image embeddings (n, D) for n prompts: ``candidates`` (default: the run's) are drawn
    per prompt and the one with the highest cosine to the prompt's CLIP text embedding is kept
    (Ramesh et al. 2022, section 2.2). ``sampling``: generate()'s sampler, steps, guidance, ... (the
    run's defaults otherwise)."""
    k = cfg.candidates if candidates is None else candidates
    options = sampling_options(cfg.sample, **sampling)
    repeated = [p for p in prompts for _ in range(k)]
    draws = generate(prior, len(repeated), Conditioning(prompts=repeated, text_encoder=text), seed=seed,
                     progress=progress, **options)
    return pick_candidates(draws, text.condition(list(prompts))["pooled"], k)


def pick_candidates(draws: torch.Tensor, text_embeds: torch.Tensor, k: int) -> torch.Tensor:
    """draws (n k, D) of n prompts' k candidates, text_embeds (n, D) -> the unit candidate (n, D) of
    each prompt with the highest cosine to its text embedding."""
    unit = nn.functional.normalize(draws.float(), dim=-1).unflatten(0, (-1, k))   # (n, k, D)
    best = (unit * text_embeds[:, None]).sum(-1).argmax(1)                         # (n,)
    return unit[torch.arange(len(unit)), best]


def decoder_parts(cfg, dataset, test, autoencoder=None):
    """What ``train_run`` needs for an unCLIP decoder: (cfg with the CLIP fingerprint filled in, the
    dataset with each item's CLIP image embedding, ``DecoderLoss``, the training grid)."""
    clip, clip_cfg, fingerprint = clip_with_fingerprint(cfg.unclip.clip, cfg.unclip.clip_fingerprint)
    if clip_cfg.clip.embed_dim != cfg.model.image_embed_dim:
        raise ValueError(f"model.image_embed_dim={cfg.model.image_embed_dim} but the CLIP model {cfg.unclip.clip} "
                         f"embeds in {clip_cfg.clip.embed_dim} dimensions")
    cfg = cfg.replace(unclip=cfg.unclip.replace(clip_fingerprint=fingerprint))
    embedded = ImageEmbedded(dataset, train_image_embeds(clip, clip_cfg, fingerprint, cfg.data))
    loss_fn = DecoderLoss(cfg.diffusion, cfg.unclip, num_classes=cfg.model.num_classes)
    return cfg, embedded, loss_fn, decoder_grid(cfg, test, clip, clip_cfg, embedded.table, autoencoder)


def decoder_grid(cfg, test, clip, clip_cfg, table, autoencoder):
    """A decoder's training grid: the first ``n_grid // 2`` test images, ten to a row, each row
    followed by the EMA model's decodings of their CLIP embeddings (with their captions where the
    run has text)."""
    real = test.get_batch(torch.arange(min(max(1, cfg.sample.n_grid // 2), len(test))))["x"]
    with torch.no_grad():
        embeds = clip.encode_image(images_for_clip(real, clip_cfg))
    prompts = list(test.captions[:len(real)]) if cfg.text is not None else None

    def sample_fn(ema_model: nn.Module, step: int) -> torch.Tensor:
        images = generate(make_denoiser(ema_model, cfg), len(real),
                          Conditioning(prompts=prompts, text_encoder=table, image_embeds=embeds),
                          bf16=samples_in_bf16(cfg), autoencoder=autoencoder, **sampling_options(cfg.sample))
        rows = [part for i in range(0, len(real), 10) for part in (real[i:i + 10], images[i:i + 10])]
        return torch.cat(rows)

    sample_fn.caption = ("odd rows: test images; even rows: the EMA decoder's samples from their CLIP image "
                         "embeddings")
    sample_fn.nrow = min(10, len(real))
    return sample_fn


class Decoder:
    """A loaded unCLIP decoder: ``denoiser``, ``autoencoder`` (identity in pixel space), ``cfg``, and
    its CLIP model (``clip``, ``clip_cfg``, checked against the fingerprint it was trained with)."""

    def __init__(self, ckpt: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
        if read_config(ckpt).get("unclip") is None:
            raise ValueError(f"{ckpt} is not an unCLIP decoder (its config has no unclip section)")
        self.ckpt = str(ckpt)
        self.denoiser, self.autoencoder, self.cfg = load_model(ckpt, use_ema, device)
        self.clip, self.clip_cfg, self.fingerprint = clip_with_fingerprint(self.cfg.unclip.clip,
                                                                           self.cfg.unclip.clip_fingerprint)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, C, H, W) in [-1, 1] -> unit CLIP image embeddings (n, D) (resized / converted
        to what the CLIP model reads)."""
        return self.clip.encode_image(images_for_clip(images, self.clip_cfg))

    def decode(self, image_embeds: torch.Tensor, prompts: list[str] | None = None, *, seed: int = 0,
               progress: bool = False, **sampling) -> torch.Tensor:
        """Images (n, C, S, S) from unit embeddings (n, D), with n captions where given (the run must
        have text), with the run's sampling defaults unless ``sampling`` overrides them."""
        if prompts is not None and self.cfg.text is None:
            raise ValueError(f"the decoder {self.ckpt} has no text conditioning: it decodes image embeddings only")
        encoder = text_encoder_for(self.cfg) if prompts is not None else None
        return generate(self.denoiser, len(image_embeds),
                        Conditioning(prompts=prompts, text_encoder=encoder, image_embeds=image_embeds), seed=seed,
                        progress=progress, bf16=samples_in_bf16(self.cfg), autoencoder=self.autoencoder,
                        **sampling_options(self.cfg.sample, **sampling))

    def check_prior(self, prior_cfg: PriorRunConfig, prior_ckpt: str | Path) -> None:
        """Refuse a prior trained on another CLIP model than this decoder, naming both."""
        if prior_cfg.clip_fingerprint != self.fingerprint:
            raise ValueError(f"the prior {prior_ckpt} was trained on the CLIP model {prior_cfg.clip} (fingerprint "
                             f"{prior_cfg.clip_fingerprint}) but the decoder {self.ckpt} on {self.cfg.unclip.clip} "
                             f"(fingerprint {self.fingerprint}): their embeddings do not match")

    def vary(self, images: torch.Tensor, n: int, *, seed: int = 0, progress: bool = False,
             **sampling) -> torch.Tensor:
        """Image variations (Ramesh et al. 2022, section 3.1): each of m images (m, C, H, W) encoded
        by the CLIP image tower and decoded n times with new noise -> (m n, C, S, S), image i's
        variations in rows i n .. i n + n - 1."""
        embeds = self.embed(images).repeat_interleave(n, dim=0)
        return self.decode(embeds, seed=seed, progress=progress, **sampling)

    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, k: int, *, seed: int = 0,
                    **sampling) -> torch.Tensor:
        """k images (k, C, S, S) along the spherical path between two images' (C, H, W) embeddings
        (section 3.2), every one from the same noise (``seed``), so that only the embedding moves."""
        from latentdiff.unclip.embeddings import slerp

        a, b = self.embed(torch.stack([image_a, image_b]))
        path = slerp(a, b, torch.linspace(0, 1, k))
        return torch.cat([self.decode(e[None], seed=seed, **sampling) for e in path])


def text_to_image(decoder: Decoder, prior_ckpt: str | Path, prompts: list[str], *, seed: int = 0,
                  captions: bool = True, progress: bool = False, prior_sampling: dict | None = None,
                  **sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """unCLIP's text -> prior -> decoder: (images (n, C, S, S), the prior's unit image embeddings
    (n, D)). ``captions``: the decoder also reads the prompts (where it has text conditioning)."""
    prior, prior_cfg, text = load_prior(prior_ckpt)
    decoder.check_prior(prior_cfg, prior_ckpt)
    embeds = sample_image_embeds(prior, prior_cfg, text, prompts, seed=seed, progress=progress,
                                 **(prior_sampling or {}))
    with_text = prompts if captions and decoder.cfg.text is not None else None
    return decoder.decode(embeds, with_text, seed=seed, progress=progress, **sampling), embeds
