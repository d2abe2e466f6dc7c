"""Scale (issue 24): two torchrun "nodes" and two ``accelerate launch`` machines on this machine, FSDP on
CPU/gloo with resume, and gradient checkpointing's gradients equal to those without it (U-Net with
attention and cross-attention, DiT, MMDiT). The multi-process tests take ~30 s each on 2 cores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentdiff.config import apply_overrides
from latentdiff.nn.blocks import set_grad_checkpointing
from latentdiff.nn.dit import DiT
from latentdiff.nn.mmdit import MMDiT
from latentdiff.nn.transformer import TransformerConfig
from latentdiff.nn.unet import UNet, UNetConfig
from latentdiff.training import TrainConfig
from latentdiff.training.resume import check_resume
from latentdiff.training.sharding import fsdp_units

ROOT = Path(__file__).resolve().parents[1]
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def torch_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_with_one_retry(start) -> list[subprocess.CompletedProcess]:
    """``start()`` -> the finished processes of one launch; launched again once only when a rank died of
    the known gloo teardown SIGABRT (as tests/test_trainer.py::test_two_process_ddp does); any other
    failure, or that one twice, is returned as it is."""
    for _ in range(2):
        procs = start()
        if all(p.returncode == 0 for p in procs) or not any(GLOO_TEARDOWN_ABORT in p.stderr for p in procs):
            break
    return procs


def run_together(cmds: list[list[str]], timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """Start every command at once (the "machines" of one job) and wait for all of them."""
    running = [subprocess.Popen(c, env=torch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in cmds]
    done = []
    for proc, cmd in zip(running, cmds):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return done


def report(procs) -> str:
    return "\n".join(p.stdout[-2000:] + p.stderr[-3000:] for p in procs)


def test_two_nodes_keep_parameters_and_ema_identical(tmp_path):
    """Two torchrun agents, one process each, meet at a c10d rendezvous on 127.0.0.1 as two nodes would,
    and train the tiny preset through the CLI's entry point; every rank's fingerprints agree."""
    script = str(ROOT / "tests" / "dist_nodes_script.py")

    def start():
        port = free_port()
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                 "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                 "--rdzv_id", "test-two-nodes", script, str(tmp_path)] for node in (0, 1)]
        return run_together(cmds)

    procs = run_with_one_retry(start)
    assert all(p.returncode == 0 for p in procs), report(procs)
    prints = [json.loads((tmp_path / f"fingerprint_rank{r}.json").read_text()) for r in range(2)]
    assert [p["rank"] for p in prints] == [0, 1] and all(p["world_size"] == 2 for p in prints)
    assert all(p["local_rank"] == 0 for p in prints)  # one process per "node"
    assert all(p["steps"] == 4 for p in prints)
    assert prints[0]["params"] == prints[1]["params"]
    assert prints[0]["ema"] == prints[1]["ema"]
    assert "effective batch 16 = 8 per process x 2 processes x 1 accumulation (2 node(s)" in procs[0].stdout


ACCELERATE_MACHINE = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 2
num_processes: 2
machine_rank: {rank}
main_process_ip: 127.0.0.1
main_process_port: {port}
mixed_precision: 'no'
dynamo_config: {{}}
"""


def test_accelerate_launch_config_two_machines(tmp_path):
    """``accelerate launch --config_file`` with one config per machine (MULTI_GPU is accelerate's name for
    a torchrun-style process group; with no GPU here the ranks train on CPU over gloo)."""
    launcher = str(Path(sys.executable).with_name("accelerate"))
    script = str(ROOT / "tests" / "dist_train_script.py")

    def start():
        port = free_port()
        cmds = []
        for rank in (0, 1):
            config = tmp_path / f"machine{rank}.yaml"
            config.write_text(ACCELERATE_MACHINE.format(rank=rank, port=port))
            cmds.append([launcher, "launch", "--config_file", str(config), script, str(tmp_path)])
        return run_together(cmds)

    procs = run_with_one_retry(start)
    assert all(p.returncode == 0 for p in procs), report(procs)
    results = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 and r["steps"] == 6 for r in results)
    assert all(r["params_equal_rank0"] and r["ema_equal_rank0"] for r in results)
    assert sorted(results[0]["first_epoch"] + results[1]["first_epoch"]) == list(range(32))


def test_fsdp_trains_and_resumes_on_cpu(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_fsdp_script.py"), str(tmp_path)]
    procs = run_with_one_retry(lambda: [subprocess.run(cmd, env=torch_env(), capture_output=True, text=True,
                                                       timeout=180)])
    assert procs[0].returncode == 0, report(procs)
    results = [json.loads((tmp_path / f"fsdp_rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world_size"] == 2
        assert res["sharded_parameters"] == res["all_parameters"]  # every parameter is a DTensor shard
        assert res["local_numel"] < 0.6 * res["full_numel"]        # each rank holds about half
        assert res["steps"] == [4, 4, 6] and res["checkpoint_steps"] == [4, 6]
        assert res["losses_finite"]
        assert res["resumed_equal_saved"] and res["resumed_ema_equal_saved"]
        assert res["final_ema_is_plain"] and res["final_ema_equal_checkpoint"]
        assert res["max_abs_diff_to_ddp"] < 1e-5, res  # the same maths as DDP, up to reduction order
    assert results[0]["local_numel"] + results[1]["local_numel"] == results[0]["full_numel"]


def grads_with_and_without_checkpointing(net, forward) -> tuple[dict, dict, int]:
    """The parameter gradients of one backward pass without, then with, gradient checkpointing (same
    seed for dropout), and how many block containers were switched."""
    grads = []
    for on in (False, True):
        switched = set_grad_checkpointing(net, on)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        forward(net).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    return grads[0], grads[1], switched


def assert_close_grads(plain: dict, checkpointed: dict) -> None:
    assert sorted(plain) == sorted(checkpointed) and plain
    for name in plain:
        scale = plain[name].abs().max().clamp_min(1e-12)
        assert (plain[name] - checkpointed[name]).abs().max() / scale <= 1e-6, name


def test_grad_checkpointing_unet_same_gradients():
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=16, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                     dropout=0.2, num_classes=3, norm_groups=4, context_dim=12)
    net = UNet(cfg).train()
    for p in net.parameters():  # zero-initialised output convs would hide most gradients
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(2)
    x, t, text = torch.randn(2, 1, 16, 16, generator=g), torch.rand(2, generator=g) * 999, torch.randn(2, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    calls = []
    net.middle[1].register_forward_pre_hook(lambda *_: calls.append(1))  # the middle self-attention
    plain, checkpointed, switched = grads_with_and_without_checkpointing(
        net, lambda m: m(x, t, torch.tensor([0, 2]), text=text, text_mask=mask))
    assert switched == len(net.down) + 1 + len(net.up)  # every stage, the middle block included
    assert len(calls) == 3  # once without; with it, once in the forward pass and once recomputed in the backward
    assert_close_grads(plain, checkpointed)


@pytest.mark.parametrize("kind", ["dit", "mmdit"])
def test_grad_checkpointing_transformers_same_gradients(kind):
    torch.manual_seed(0)
    interface = UNetConfig(image_size=8, in_channels=2, num_classes=3 if kind == "dit" else 0, context_dim=12)
    cfg = TransformerConfig(kind=kind, patch_size=2, dim=32, depth=3, heads=4, qk_norm=True)
    net = (DiT if kind == "dit" else MMDiT)(interface, cfg).train()
    for p in net.parameters():  # adaLN-Zero starts every block as the identity: no gradient inside
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(2)
    x, t, text = torch.randn(2, 2, 8, 8, generator=g), torch.rand(2, generator=g) * 999, torch.randn(2, 4, 12)
    mask = torch.tensor([[True] * 4, [True, False, False, False]])
    plain, checkpointed, switched = grads_with_and_without_checkpointing(
        net, lambda m: m(x, t, text=text, text_mask=mask))
    assert switched == 1
    assert_close_grads(plain, checkpointed)


def test_scale_flags_default_off_and_old_checkpoints_resume():
    cfg = TrainConfig()
    assert not cfg.fsdp and not cfg.grad_checkpointing
    old = {"train": {k: v for k, v in cfg.to_dict().items() if k not in ("fsdp", "grad_checkpointing")}}
    assert check_resume(old, {"train": cfg.to_dict()}, "old run") == {}  # written before the flags existed
    on = {"train": cfg.replace(grad_checkpointing=True).to_dict()}
    assert check_resume(old, on, "old run") == {"train.grad_checkpointing": (False, True)}  # memory for time
    with pytest.raises(ValueError, match="train.fsdp: checkpoint False, command True"):
        check_resume(old, {"train": cfg.replace(fsdp=True).to_dict()}, "old run")
    assert apply_overrides(cfg, ["fsdp=true", "grad_checkpointing=true"]).fsdp
    with pytest.raises(ValueError, match="train.fsdp must be true or false"):
        TrainConfig(fsdp="yes")


def test_fsdp_units_are_the_blocks():
    net = UNet(UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                          norm_groups=4, context_dim=8))
    units = fsdp_units(net)
    names = {type(u).__name__ for u in units}
    assert {"ResBlock", "SelfAttention2d", "CrossAttention2d"} <= names
    assert not any(isinstance(u, torch.nn.ModuleList) for u in units)
