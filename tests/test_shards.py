"""Webdataset shards (``latentdiff prepare``, ``data.name=shards``): exact round trip, an exact split over
ranks and workers, resumable position, bitwise training resume, corrupt members, the CLI and the manifest."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from clirun import run_cli
from latentdiff.data.shard_stream import ShardDataset, ShardStream
from latentdiff.data.shards import read_manifest, sha256_of, shard_name, verify_shards, write_shards
from latentdiff.training import TrainConfig, Trainer
from latentdiff.training.batches import ShardBatchStream

N, SHARD, S = 40, 5, 8
HOLDS = {"image": {"format": "png", "channels": 3, "size": S}, "caption": True, "label": True,
         "latent": {"autoencoder": "test", "autoencoder_hash": "h0", "shape": [2, 4, 4]},
         "text_embedding": {"text": {}}}


def source_items(n: int = N) -> list[dict]:
    """n items with every field; ``label`` = the item's index, so each item is known by it."""
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, S, S), generator=g, dtype=torch.uint8), "label": i,
             "caption": f"item {i} ünïcode", "latent": torch.randn(2, 4, 4, generator=g),
             "text": torch.randn(6, 5, generator=g).half(), "text_mask": torch.arange(6) < 1 + i % 6,
             "pooled": torch.randn(5, generator=g)} for i in range(n)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    items = source_items()
    write_shards(items, root, SHARD, HOLDS, {"kind": "test"}, extra={"num_classes": N}, progress=False)
    return root, items


def stream_batches(root, rank, world, workers, batches, start=(0, 0), latent_hash=None):
    """``batches`` batches of rank ``rank`` read through a DataLoader with ``workers`` workers."""
    stream = ShardStream(root, 2, seed=5, rank=rank, world_size=world, num_workers=workers, shuffle_buffer=4,
                         latent_hash=latent_hash, text=True)
    stream.start = start
    loader = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    return [next(loader) for _ in range(batches)]


def test_round_trip_and_exact_split_over_2_ranks_x_2_workers(shards):
    root, items = shards
    seen = []
    for rank in (0, 1):
        for batch in stream_batches(root, rank, 2, 2, batches=10):  # 40 items / 2 ranks / batch 2
            assert batch["corrupt"] == 0 and batch["x"].shape == (2, 3, S, S)
            for i, label in enumerate(batch["label"].tolist()):
                item = items[label]
                assert torch.equal(batch["x"][i], item["image"].float() / 127.5 - 1)
                assert batch["caption"][i] == item["caption"]
                assert torch.equal(batch["text"][i], item["text"].float())
                assert torch.equal(batch["text_mask"][i], item["text_mask"])
                assert torch.equal(batch["pooled"][i], item["pooled"])
                seen.append(label)
    assert sorted(seen) == list(range(N))  # none lost, none twice


def test_latents_as_x_and_shuffled_order(shards):
    root, items = shards
    batches = stream_batches(root, 0, 1, 0, batches=20, latent_hash="h0")
    labels = [y for b in batches for y in b["label"].tolist()]
    assert sorted(labels) == list(range(N)) and labels != list(range(N))
    for batch in batches:
        assert batch["x"].shape == (2, 2, 4, 4)
        assert all(torch.equal(batch["x"][i], items[y]["latent"]) for i, y in enumerate(batch["label"].tolist()))
    data = ShardDataset(root, latent_hash="h0")
    assert data.channels == 2 and data.image_size == 4
    with pytest.raises(ValueError, match="no latents of autoencoder other"):
        ShardDataset(root, latent_hash="other").stream(2, 0)


def test_webdataset_reads_the_shards(shards):
    import webdataset as wds

    root, items = shards
    urls = [str(root / shard_name(i)) for i in range(N // SHARD)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(samples) == N
    assert samples[3]["txt"] == items[3]["caption"]
    assert np.array_equal(samples[3]["png"], items[3]["image"].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_at_its_position(shards, workers):
    root, _ = shards
    data = ShardDataset(root, shuffle_buffer=4)
    full = ShardBatchStream(data, 2, 5, 0, 1, workers, torch.device("cpu"))
    per_epoch = full.batches_per_epoch
    reference = [full.next()["label"].tolist() for _ in range(per_epoch + 5)]
    for epoch, index in [(0, 3), (0, per_epoch - 1), (1, 2)]:
        resumed = ShardBatchStream(data, 2, 5, 0, 1, workers, torch.device("cpu"))
        resumed.seek(epoch, index)
        at = epoch * per_epoch + index
        assert [resumed.next()["label"].tolist() for _ in range(3)] == reference[at:at + 3]
    assert reference[per_epoch:per_epoch + 5] != reference[:5]  # each epoch has its own order


def test_resume_reads_only_what_it_needs(shards, monkeypatch):
    root, _ = shards
    opened = []
    original = ShardStream._read_shard
    monkeypatch.setattr(ShardStream, "_read_shard", lambda self, shard, *a: (opened.append(shard["name"]),
                                                                            original(self, shard, *a)))
    stream_batches(root, 0, 1, 0, batches=1, start=(0, 19))  # the epoch's last batch
    assert len(opened) < N // SHARD


def _tiny_loss(model, batch, generator):
    x = batch["x"].flatten(1)
    noise = torch.randn(x.shape, generator=generator)
    loss = (model(x + noise) - noise).pow(2).mean()
    return loss, {}


def _train(out_dir, root, max_steps, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3 * S * S, 16), nn.SiLU(), nn.Linear(16, 3 * S * S))
    cfg = TrainConfig(batch_size=4, lr=1e-2, warmup_steps=2, max_steps=max_steps, checkpoint_every=3,
                      sample_every=1000, log_every=2, seed=7, num_workers=0)
    trainer = Trainer(model, _tiny_loss, ShardDataset(root, shuffle_buffer=8), cfg, out_dir,
                      run_config={"train": cfg.to_dict()}, cpu=True)
    trainer.train()
    return trainer


def test_resumed_training_is_bitwise_equal_to_an_uninterrupted_run(shards, tmp_path):
    root, _ = shards
    full = _train(tmp_path / "full", root, 14)  # 14 steps of batch 4: past the 10-batch epoch
    _train(tmp_path / "split", root, 7)
    resumed = _train(tmp_path / "split", root, 14, seed=1)
    assert resumed.data.position == full.data.position == (1, 4)
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def _damage(path, member_name, how):
    """Rewrite the tar ``path`` with ``member_name``'s bytes garbled (``how="garble"``) or cut off there."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if member.name == member_name and how == "garble":
                data = data[:20] + b"\x00not a png" * 4
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    raw = out.getvalue()
    if how == "truncate":
        raw = raw[:raw.index(member_name.encode()) + 700]
    path.write_bytes(raw)


@pytest.mark.parametrize("how,lost", [("garble", 1), ("truncate", 3)])
def test_corrupt_members_are_skipped_and_counted(tmp_path, how, lost):
    items = source_items(20)
    write_shards(items, tmp_path, SHARD, HOLDS, {"kind": "test"}, progress=False)
    _damage(tmp_path / shard_name(1), "000000007.png", how)  # truncate: items 7, 8, 9 go
    assert verify_shards(tmp_path) == [shard_name(1)]
    data = ShardDataset(tmp_path, shuffle_buffer=4)
    stream = ShardBatchStream(data, 2, 0, 0, 1, 0, torch.device("cpu"))
    labels = []
    while stream.position[0] == 0:
        labels += stream.next()["label"].tolist()
    assert stream.corrupt == lost and len(labels) == 20 - lost
    assert sorted(labels) == sorted(set(range(20)) - set(range(7, 7 + lost)))


def test_prepare_cli_on_a_tiny_folder(tmp_path, capsys):
    folder, rng = tmp_path / "photos", np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
            (folder / cls / f"{i}.txt").write_text(f"a {cls} number {i}")
    code, out, err = run_cli(capsys, ["prepare", str(folder), str(tmp_path / "out"), "--shard-size", "4"])
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["items"] == 6
    manifest = read_manifest(tmp_path / "out")
    assert manifest["num_shards"] == 2 and [s["items"] for s in manifest["shards"]] == [4, 2]
    assert manifest["class_names"] == ["cat", "dog"] and manifest["holds"]["image"]["size"] == S
    for shard in manifest["shards"]:
        assert sha256_of(tmp_path / "out" / shard["name"]) == shard["sha256"]
    assert verify_shards(tmp_path / "out") == []
    stream = ShardBatchStream(ShardDataset(tmp_path / "out"), 2, 0, 0, 1, 0, torch.device("cpu"))
    batch = stream.next()
    for i, caption in enumerate(batch["caption"]):
        cls, number = caption.split()[1], int(caption.split()[-1])
        assert batch["label"][i] == ["cat", "dog"].index(cls)
        pixels = np.array(Image.open(folder / cls / f"{number}.png"))
        assert torch.equal(batch["x"][i], torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_too_few_shards_for_the_split_is_refused(shards):
    root, _ = shards
    with pytest.raises(ValueError, match="shards for 4 process"):
        ShardStream(root, 2, world_size=4, num_workers=4)


def test_data_config_names_a_shard_folder(shards):
    from latentdiff.data import DataConfig, build_dataset

    root, _ = shards
    data = build_dataset(DataConfig(name="shards", root=str(root), image_size=S, channels=3))
    assert isinstance(data, ShardDataset) and len(data) == N and data.num_classes == N
    with pytest.raises(ValueError, match="data.image_size=32"):
        build_dataset(DataConfig(name="shards", root=str(root), image_size=32, channels=3))


def test_text_to_image_run_on_shards_with_stored_embeddings(tmp_path, capsys):
    """prepare a preset's data with its text encoder's embeddings, then train that preset on the shards."""
    dst, run = tmp_path / "shards", tmp_path / "run"
    code, _, err = run_cli(capsys, ["prepare", "tiny-t2i", str(dst), "--shard-size", "16", "--text-embeddings"])
    assert code == 0, err
    assert read_manifest(dst)["holds"]["text_embedding"]["text"]["max_length"] > 0
    code, out, err = run_cli(capsys, ["train", "--preset", "tiny-t2i", "--out", str(run), "--set", "data.name=shards",
                                      f"data.root={dst}", "train.max_steps=3"])
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["steps"] == 3


def test_latent_run_on_shards_takes_the_stored_latents(tmp_path, capsys):
    """prepare with an autoencoder's latents; a latent run on the shards uses them (and refuses another's)."""
    vae, dst = tmp_path / "vae", tmp_path / "shards"
    shapes = ["data.name=shapes", "data.n=64", "data.channels=3"]
    code, _, err = run_cli(capsys, ["train", "--preset", "tiny-vae", "--out", str(vae), "--set", "train.max_steps=1",
                                    "autoencoder.in_channels=3", *shapes])
    assert code == 0, err
    code, _, err = run_cli(capsys, ["prepare", "shapes", str(dst), "--shard-size", "8", "--latents",
                                    str(vae / "checkpoint"), "--set", "data.n=64"])
    assert code == 0, err
    run = ["train", "--preset", "tiny-ldm", "--out", str(tmp_path / "ldm"), "--set", "data.name=shards",
           f"data.root={dst}", "data.channels=3", "model.num_classes=0", "train.max_steps=2", "train.batch_size=8"]
    code, out, err = run_cli(capsys, run + [f"autoencoder={vae / 'checkpoint'}"])
    assert code == 0, err
    (vae / "checkpoint" / "config.json").write_text((vae / "checkpoint" / "config.json").read_text() + " ")
    code, _, err = run_cli(capsys, run[:4] + [str(tmp_path / "ldm2")] + run[5:] + [f"autoencoder={vae / 'checkpoint'}"])
    assert code == 1 and "holds no latents of autoencoder" in err
