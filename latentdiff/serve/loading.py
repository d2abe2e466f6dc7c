"""Loaded models, kept in a small least-recently-used cache so that a request after the first one for a
model does not read its weights again. Text encoders are shared between the models that use the same
one. Loading goes through the library's loaders (``load_model``, ``load_controlled``,
``load_model_with_adapters``, ``load_upscaler``, the unCLIP ``Decoder``), so a served model samples
exactly as ``latentdiff sample`` samples it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

from torch import nn

from latentdiff.precond import Denoiser
from latentdiff.presets import RunConfig, SampleConfig
from latentdiff.serve.models import ServedModel


@dataclasses.dataclass
class LoadedModel:
    """A model ready to sample: its denoiser, autoencoder (identity in pixel space), the RunConfig its
    images come from, its sampling defaults, and what its kind adds (a ControlNet's config, an unCLIP
    ``Decoder``, a super-resolution ``Stage``)."""

    denoiser: Denoiser
    autoencoder: nn.Module | None
    run: RunConfig
    defaults: SampleConfig
    controlnet: Any = None      # the ControlNetRunConfig of a ControlNet model
    decoder: Any = None         # the pipelines.unclip.Decoder of an unCLIP decoder
    stage: Any = None           # the pipelines.cascade.Stage of an upscaler


def lora_available() -> bool:
    """Whether this installation has LoRA adapters (``pipelines.lora.load_model_with_adapters``)."""
    try:
        import latentdiff.pipelines.lora as lora
    except ImportError:
        return False
    return hasattr(lora, "load_model_with_adapters")


def load_served(model: ServedModel, adapters: tuple[tuple[str, float], ...] = (), use_ema: bool = True,
                device: str = "cpu") -> LoadedModel:
    """Load ``model`` onto ``device`` with LoRA adapters ((checkpoint path, scale), ...) on it."""
    if model.task == "superres":
        from latentdiff.pipelines.cascade import load_upscaler

        stage = load_upscaler(model.path, use_ema=use_ema, device=device)
        stage.name = model.name
        return LoadedModel(stage.denoiser, None, stage.cfg, stage.cfg.sample, stage=stage)
    if model.task == "controlnet":
        from latentdiff.pipelines.controlnet import load_controlled

        denoiser, autoencoder, run, (cn,) = load_controlled(None, [model.path], use_ema=use_ema, device=device)
        return LoadedModel(denoiser, autoencoder, run, cn.sample, controlnet=cn)
    if model.run.unclip is not None:
        from latentdiff.pipelines.unclip import Decoder

        decoder = Decoder(model.path, use_ema=use_ema, device=device)
        return LoadedModel(decoder.denoiser, decoder.autoencoder, decoder.cfg, decoder.cfg.sample, decoder=decoder)
    if adapters or model.task == "lora":
        from latentdiff.pipelines.lora import load_model_with_adapters

        denoiser, autoencoder, run = load_model_with_adapters(model.path, [f"{p}:{s}" for p, s in adapters],
                                                              use_ema=use_ema, device=device)
        return LoadedModel(denoiser, autoencoder, run, run.sample)
    from latentdiff.pipelines import load_model

    denoiser, autoencoder, run = load_model(model.path, use_ema=use_ema, device=device)
    return LoadedModel(denoiser, autoencoder, run, run.sample)


class ModelCache:
    """At most ``max_loaded`` models loaded on ``device`` (least recently used dropped first), each loaded
    once even when several workers ask for it at the same time; and one text encoder per text config."""

    def __init__(self, max_loaded: int = 2, use_ema: bool = True, device: str = "cpu"):
        if max_loaded < 1:
            raise ValueError(f"--max-loaded must be at least 1, got {max_loaded}")
        self.max_loaded, self.use_ema, self.device = max_loaded, use_ema, device
        self._loaded: collections.OrderedDict[tuple, LoadedModel] = collections.OrderedDict()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self._encoders: dict[Any, Any] = {}

    def get(self, model: ServedModel, adapters: tuple[tuple[str, float], ...] = ()) -> LoadedModel:
        """``model`` with ``adapters`` loaded (from the cache where it is there)."""
        key = (model.name, str(model.path), adapters)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key]
            loaded = load_served(model, adapters, self.use_ema, self.device)
            with self._lock:
                self._loaded[key] = loaded
                while len(self._loaded) > self.max_loaded:
                    old, _ = self._loaded.popitem(last=False)
                    self._key_locks.pop(old, None)
            return loaded

    def text_encoder(self, run: RunConfig):
        """The run's frozen text encoder, one per text config (None without text)."""
        if run.text is None:
            return None
        from latentdiff.pipelines import text_encoder_for

        key = run.text.to_json() if hasattr(run.text, "to_json") else repr(run.text)
        with self._lock:
            if key not in self._encoders:
                self._encoders[key] = text_encoder_for(run)
            return self._encoders[key]

    def loaded_names(self) -> list[str]:
        with self._lock:
            return [key[0] for key in self._loaded]
