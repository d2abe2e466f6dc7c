"""LoRA through peft (issue 22, items 4-5): adapters on tiny U-Nets and transformers, their training in the
shared loop on an image folder, prior preservation, loading with scales, merging, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clirun import run_cli
from latentdiff.config import apply_overrides
from latentdiff.data.shapes import ShapesDataset, concept_scenes, parse_prompt
from latentdiff.eval.adherence import score
from latentdiff.interop.lora import (AdaptedNet, LoRAConfig, adapter_layers, adapter_state, add_adapter, base_state,
                                     load_adapter_state, merge_adapters, set_adapters, target_modules)
from latentdiff.io.checkpoint import save_checkpoint, weights_fingerprint
from latentdiff.objectives.flow import diffusion_loss
from latentdiff.objectives.prior_preservation import PairedDataset, PriorPreservation
from latentdiff.pipelines.diffusion import build_backbone, load_denoiser
from latentdiff.pipelines.lora import instance_captions, load_model_with_adapters
from latentdiff.presets import get_preset
from latentdiff.presets.lora import LoRARunConfig
from latentdiff.training.optim import build_optimizer

RANK = LoRAConfig(rank=2, alpha=4.0)


def perturbed(net: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """net with every weight moved off its initialisation (zero-initialised projections included), so
    that every layer shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


def tiny_net(kind: str = "unet", seed: int = 0) -> torch.nn.Module:
    """A tiny text-to-image backbone: U-Net (attention blocks or SpatialTransformers), DiT or MMDiT."""
    overrides = {"unet-transformer": ["model.transformer=true"], "dit": ["transformer.kind=dit"]}.get(kind, [])
    preset = {"unet": "tiny-t2i", "unet-transformer": "tiny-t2i"}.get(kind, "tiny-mmdit")
    cfg = apply_overrides(get_preset(preset), overrides)
    torch.manual_seed(seed)
    return perturbed(build_backbone(cfg), seed)


def inputs(net: torch.nn.Module, batch: int = 2, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    c = net.cfg
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g)
    cond = {}
    if c.context_dim:
        cond = {"text": torch.randn(batch, 5, c.context_dim, generator=g),
                "text_mask": torch.ones(batch, 5, dtype=torch.bool),
                "pooled": torch.randn(batch, c.pooled_dim, generator=g)}
    if c.num_classes:
        cond["class_labels"] = torch.arange(batch) % c.num_classes
    return x, torch.tensor([100.0, 700.0][:batch]), cond


def randomise_adapter(net: torch.nn.Module, name: str, seed: int) -> None:
    """B (zero at init) and A set to random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if f".lora_A.{name}." in pname or f".lora_B.{name}." in pname:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def out(net, x, t, cond) -> torch.Tensor:
    return net(x, t, **cond)


@pytest.mark.parametrize("kind", ["unet", "unet-transformer", "dit", "mmdit"])
def test_new_adapter_leaves_the_output_exactly_equal(kind):
    net = tiny_net(kind)
    x, t, cond = inputs(net)
    before = out(net, x, t, cond)
    add_adapter(net, RANK)
    assert len(adapter_layers(net)) == len(target_modules(net)) > 0
    # peft adds B (A x) with B = 0: the update is exactly zero; the wrapped layers' outputs may take
    # another float32 kernel path (seen on MMDiT: 6e-8), so the outputs are compared at 1e-6
    assert all(float(p.abs().max()) == 0.0 for n, p in net.named_parameters() if ".lora_B." in n)
    torch.testing.assert_close(out(net, x, t, cond), before, rtol=0.0, atol=1e-6)


def test_targets_are_the_attention_projections_and_optionally_the_convolutions():
    unet = tiny_net("unet")
    assert target_modules(unet) == ["middle.1.proj", "middle.1.qkv", "middle.2.kv", "middle.2.proj", "middle.2.q"]
    with_conv = target_modules(unet, "attention+conv")
    assert set(target_modules(unet)) < set(with_conv) and any(n.endswith("conv1") for n in with_conv)
    spatial = target_modules(tiny_net("unet-transformer"))
    assert {n.rsplit(".", 1)[1] for n in spatial} == {"qkv", "self_out", "q", "kv", "cross_out"}
    dit = target_modules(tiny_net("dit"))
    assert {n.rsplit(".", 2)[1] + "." + n.rsplit(".", 1)[1] for n in dit} == {"attn.qkv", "attn.out", "cross.q",
                                                                              "cross.kv", "cross.out"}


def test_training_moves_only_the_adapter():
    net = add_adapter(tiny_net(), RANK)
    model = AdaptedNet(net)
    frozen = {k: v.clone() for k, v in base_state(net).items()}
    start = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = diffusion_loss(get_preset("tiny-t2i").diffusion)
    optimizer = build_optimizer(model.parameters(), 1e-2, weight_decay=0.1)  # as the Trainer: every parameter
    x, _, cond = inputs(net, batch=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss, _ = loss_fn(model, {"x": x, **cond}, g)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = base_state(net)
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert set(model.state_dict()) == set(start) and all(".lora_" in k for k in start)
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in start.items())


def test_scale_zero_is_the_base_and_merging_equals_the_adapter():
    net = tiny_net()
    x, t, cond = inputs(net)
    base = out(net, x, t, cond)
    add_adapter(net, RANK, "a")
    randomise_adapter(net, "a", 0)
    set_adapters(net, {"a": 0.0})
    assert torch.equal(out(net, x, t, cond), base)
    set_adapters(net, {"a": 0.7})
    adapted = out(net, x, t, cond)
    assert (adapted - base).abs().max() > 1e-3
    merge_adapters(net)
    assert not adapter_layers(net) and set(net.state_dict()) == set(tiny_net().state_dict())
    assert torch.allclose(out(net, x, t, cond), adapted, atol=1e-5)


def test_two_adapters_add_their_scaled_updates():
    net = tiny_net()
    add_adapter(net, RANK, "a")
    add_adapter(net, LoRAConfig(rank=3, alpha=3.0), "b")
    randomise_adapter(net, "a", 1)
    randomise_adapter(net, "b", 2)
    set_adapters(net, {"a": 0.5, "b": -1.5})
    layer = net.get_submodule("middle.2.kv")  # a Linear: W x + sum_k s_k (alpha_k / r_k) B_k A_k x
    h = torch.randn(3, layer.in_features)
    want = layer.get_base_layer()(h)
    for name, s, scale in (("a", 0.5, 4.0 / 2), ("b", -1.5, 3.0 / 3)):
        want = want + s * scale * h @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T
    assert torch.allclose(layer(h), want, atol=1e-5)
    x, t, cond = inputs(net)
    both = out(net, x, t, cond)
    merge_adapters(net)
    assert torch.allclose(out(net, x, t, cond), both, atol=1e-5)


def test_adapter_state_round_trip_gives_identical_outputs(tmp_path):
    net = add_adapter(tiny_net(), RANK)
    randomise_adapter(net, "default", 3)
    x, t, cond = inputs(net)
    save_checkpoint(tmp_path / "ckpt", {"task": "lora"}, adapter_state(net))
    state = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(state) == set(adapter_state(net)) and all(".lora_A." in k or ".lora_B." in k for k in state)
    other = add_adapter(tiny_net(), RANK)
    load_adapter_state(other, state)
    assert torch.equal(out(other, x, t, cond), out(net, x, t, cond))
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(add_adapter(tiny_net(), RANK), {k: v for k, v in list(state.items())[1:]})


def test_prior_preservation_is_instance_loss_plus_lambda_class_loss():
    net = tiny_net()
    x, _, cond = inputs(net, batch=4, seed=5)
    x_pr, _, cond_pr = inputs(net, batch=4, seed=6)
    loss_fn = diffusion_loss(get_preset("tiny-t2i").diffusion)
    paired = PairedDataset(Items({"x": x, **cond}), Items({"x": x_pr, **cond_pr}))
    batch = paired.get_batch(torch.arange(4))
    lam = 0.7
    with torch.no_grad():
        got, logs = PriorPreservation(loss_fn, lam)(net, batch, torch.Generator().manual_seed(9))
        g = torch.Generator().manual_seed(9)
        instance, _ = loss_fn(net, {"x": x, **cond}, g)
        prior, _ = loss_fn(net, {"x": x_pr, **cond_pr}, g)
    assert torch.allclose(got, instance + lam * prior, rtol=1e-6)
    assert logs["prior_loss"] == pytest.approx(float(prior)) and logs["instance_loss"] == pytest.approx(float(instance))


class Items:
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["x"])

    def get_batch(self, index):
        return {k: v[index] for k, v in self.tensors.items()}


def test_reader_reads_the_generators_new_concept_and_old_shapes():
    images, captions, _ = concept_scenes(200, two_objects=0.3)
    assert parse_prompt(captions[0])[0][0]["shape"] == "cross"
    assert np.mean([score(c, im)["all_correct"] for im, c in zip(images, captions)]) >= 0.95
    old = ShapesDataset(n=500, split="test")
    assert np.mean([score(c, old.images[i].permute(1, 2, 0).numpy())["all_correct"]
                    for i, c in enumerate(old.captions)]) >= 0.99


# --------------------------------------------------------------------------- end to end, through the CLI


def write_folder(root, n: int = 8, caption: bool = True, size: int = 32):
    images, captions, _ = concept_scenes(n, image_size=size)
    root.mkdir(parents=True)
    for i, (im, c) in enumerate(zip(images, captions)):
        Image.fromarray(im).save(root / f"{i:02d}.png")
        if caption:
            (root / f"{i:02d}.txt").write_text(c)
    return root, captions


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two tiny text-to-image checkpoints (other weights), for adapters and the wrong-base refusal."""
    root = tmp_path_factory.mktemp("bases")
    cfg = get_preset("tiny-t2i")
    for i in (0, 1):
        net = perturbed(build_backbone(cfg), seed=10 + i)
        save_checkpoint(root / f"base{i}", cfg.to_dict(), net.state_dict(), net.state_dict())
    return root / "base0", root / "base1"


def lora_train(capsys, run, base, data, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, ["train", "--preset", "lora", "--out", str(run), "--set", f"base={base}",
                            f"data.path={data}", "lora.rank=2", "train.batch_size=4", "train.max_steps=2",
                            "train.checkpoint_every=1", "train.sample_every=100", *extra])


def test_cli_train_sample_resume_and_refusals(tmp_path, capsys, bases):
    base, other = bases
    data, captions = write_folder(tmp_path / "data")
    run = tmp_path / "run"
    prior = ["prior.weight=1.0", "prior.n=4", "prior.prompt=a small red circle in the center"]
    code, out_, err = lora_train(capsys, run, base, data, *prior)
    assert code == 0, err
    ckpt = run / "checkpoint"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["task"] == "lora" and config["base"] == str(base)
    assert config["base_fingerprint"] == weights_fingerprint(load_denoiser(base)[0].net)
    weights = load_file(ckpt / "model.safetensors")
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert len(weights) == 2 * len(target_modules(build_backbone(get_preset("tiny-t2i"))))
    # resume: 2 more steps continue the run, bitwise equal to 4 steps straight
    assert lora_train(capsys, run, base, data, *prior, "train.max_steps=4")[0] == 0
    straight = tmp_path / "straight"
    assert lora_train(capsys, straight, base, data, *prior, "train.max_steps=4")[0] == 0
    a, b = load_file(run / "checkpoint" / "ema.safetensors"), load_file(straight / "checkpoint" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # sampling: on its base with a scale, as CKPT itself, merged
    png = tmp_path / "s.png"
    code, _, err = run_cli(capsys, ["sample", str(base), "--lora", f"{ckpt}:0.8", "--lora", f"{straight}/checkpoint",
                                    "--n", "2", "--steps", "2", "--prompt", captions[0], "--out", str(png)])
    assert code == 0 and png.is_file(), err
    code, _, err = run_cli(capsys, ["sample", str(ckpt), "--merge-lora", "--n", "2", "--steps", "2",
                                    "--out", str(png)])
    assert code == 0, err
    # an adapter of another base is refused, naming both
    code, _, err = run_cli(capsys, ["sample", str(other), "--lora", str(ckpt), "--n", "2", "--steps", "2",
                                    "--out", str(png)])
    assert code != 0 and str(base) in err and str(other) in err and "fingerprint" in err
    with pytest.raises(ValueError, match=str(other)):
        load_model_with_adapters(other, [str(ckpt)])


def test_folder_without_captions_needs_captions_none(tmp_path, capsys, bases):
    base, _ = bases
    data, _ = write_folder(tmp_path / "data", caption=False)
    (data / "00.txt").write_text("a small red cross in the center")
    code, _, err = lora_train(capsys, tmp_path / "run", base, data)
    assert code != 0 and "01.png has no caption" in err and "data.captions=none" in err
    code, _, err = lora_train(capsys, tmp_path / "run2", base, data, "data.captions=none")
    assert code == 0, err
    cfg = LoRARunConfig.from_dict(json.loads((tmp_path / "run2" / "checkpoint" / "config.json").read_text()))
    from latentdiff.data import build_dataset
    from latentdiff.pipelines.lora import folder_data

    images = build_dataset(folder_data(cfg, cfg.base_config), "train")
    assert instance_captions(cfg, cfg.base_config, images) == [""] * 8  # the empty prompt: unconditional


def test_metadata_jsonl_captions(tmp_path, bases):
    base, _ = bases
    data, captions = write_folder(tmp_path / "data", n=4, caption=False)
    lines = [json.dumps({"file_name": f"{i:02d}.png", "text": c}) for i, c in enumerate(captions)]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    from latentdiff.data import build_dataset
    from latentdiff.pipelines.lora import folder_data
    from latentdiff.presets import RunConfig

    base_cfg = RunConfig.from_dict(json.loads((base / "config.json").read_text()))
    cfg = get_preset("lora").replace(base=str(base), data=get_preset("lora").data.replace(path=str(data)))
    images = build_dataset(folder_data(cfg, base_cfg), "train")
    assert instance_captions(cfg, base_cfg, images) == captions


def test_data_flag_names_the_lora_folder(tmp_path):
    from latentdiff.cli.main import build_parser
    from latentdiff.cli.train_args import train_config

    args = build_parser().parse_args(["train", "--preset", "lora", "--out", str(tmp_path / "run"), "--data", "DIR",
                                      "--set", "base=CKPT"])
    cfg = train_config(args)
    assert (cfg.data.path, cfg.base) == ("DIR", "CKPT")
