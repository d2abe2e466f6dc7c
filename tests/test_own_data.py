"""Training on your own image folder (README, "Train on your own images"), issue 25's data half.

Folders are drawn here with PIL: colour class folders with a loose file, grey, captions (.txt and
metadata.jsonl), 16-bit PNG, palette, RGBA and mixed sizes. The README's commands are read from
the README and run through ``latentdiff.cli.main.main`` in-process; the only substitutions are
the folder and run paths, ``--preset fmnist-ddpm`` -> ``tiny`` and ``--minutes 30`` -> two steps.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from latentdiff.cli.main import main
from latentdiff.config import apply_overrides
from latentdiff.data import DataConfig, build_dataset
from latentdiff.data.image_folder import ImageFolder
from latentdiff.data.resolve import class_index, resolve_data
from latentdiff.pipelines import generate, load_model
from latentdiff.presets import get_preset

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--set", "train.max_steps=2", "train.batch_size=4", "train.sample_every=2", "sample.n_grid=4"]


def readme_commands() -> list[str]:
    """The command lines of the README section's first code block."""
    text = README.read_text()
    section = text.split("## Train on your own images\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("latentdiff ")]


def as_argv(command: str, data: Path, run: Path) -> list[str]:
    argv = shlex.split(command)[1:]
    argv = [str(data) if a == "my_images" else str(run) + a[len("runs/mine"):] if a.startswith("runs/mine")
            else str(run.parent / a) if a.endswith(".png") else a for a in argv]
    if argv[0] == "train":
        argv[argv.index("--preset") + 1] = "tiny"
        i = argv.index("--minutes")
        argv[i:i + 2] = TINY
    return argv


def shape(draw: ImageDraw.ImageDraw, kind: str, size: int, fill) -> None:
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if kind == "cat" else draw.rectangle)(box, fill=fill)


def colour_classes(root: Path, n: int = 8, size: int = 32) -> Path:
    """root/cat/*.png (red discs), root/dog/*.png (blue squares) and a loose root/stray.png."""
    for kind, fill in (("cat", (220, 30, 30)), ("dog", (30, 30, 220))):
        (root / kind).mkdir(parents=True)
        for i in range(n):
            image = Image.new("RGB", (size, size), (i * 20, 200, 200))
            shape(ImageDraw.Draw(image), kind, size, fill)
            image.save(root / kind / f"{i}.png")
    Image.new("RGB", (size, size), "white").save(root / "stray.png")
    return root


def run_cli(argv: list[str], capsys) -> str:
    main(argv)
    captured = capsys.readouterr()
    return captured.out + captured.err


def refused(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return str(caught.value.code)


def test_readme_commands_on_class_folders(tmp_path, capsys):
    data, run = colour_classes(tmp_path / "my_images"), tmp_path / "runs" / "mine"
    commands = readme_commands()
    assert [shlex.split(c)[1] for c in commands] == ["train", "sample", "eval"]
    train, sample, evaluate = (as_argv(c, data, run) for c in commands)

    out = run_cli(train, capsys)
    layout = [line for line in out.splitlines() if line.startswith(f"data {data}")]
    assert layout == [f"data {data}: 16 images; class subfolders -> labels, 2 classes (cat: 8, dog: 8); "
                      f"colour (RGB) -> 3 channels; 32x32 -> 32x32"]
    assert "skipped 1 loose image(s) at the top level" in out and "stray.png" in out
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["data"]["class_names"] == ["cat", "dog"]
    assert (config["model"]["in_channels"], config["model"]["num_classes"], config["model"]["image_size"]) == (3, 2, 32)

    # the same command again resolves the same config: it resumes, the config is not replaced
    saved = (run / "config.json").read_text()
    again = run_cli(train, capsys)
    assert "differs" not in again and (run / "config.json").read_text() == saved

    assert sample[sample.index("--class-label") + 1] == "cat"
    assert "wrote" in run_cli(sample, capsys)
    picture = np.asarray(Image.open(sample[sample.index("--out") + 1]).convert("RGB"), dtype=float)
    assert picture.shape[2] == 3
    by_index = list(sample)
    by_index[by_index.index("--class-label") + 1] = "1"
    assert "wrote" in run_cli(by_index, capsys)
    by_index[by_index.index("--class-label") + 1] = "bird"
    message = refused(by_index)
    assert "--class-label 'bird': not a class of this model; classes: 0 cat, 1 dog" in message

    # no train/ and test/ splits: eval says what it needs instead of scoring the folder against itself
    message = refused(evaluate)
    assert message.startswith("latentdiff eval: eval needs held-out images") and "train/" in message
    assert "test/" in message


def test_refusals_name_both_values(tmp_path):
    data = colour_classes(tmp_path / "imgs", n=2)
    base = ["train", "--preset", "tiny", "--data", str(data)]
    cases = {
        ("model.num_classes=10",): "model.num_classes=10 but " + str(data) + " has 2 class folders (cat, dog)",
        ("data.channels=3", "model.in_channels=1"): "data.channels=3 but model.in_channels=1: they must agree",
        ("data.image_size=64", "model.image_size=32"): "data.image_size=64 but model.image_size=32",
        ("data.image_size=31",): "data.image_size=31: this model (model.channel_mult [1, 2], patch_size 1) "
                                 "needs a multiple of 2",
        ("data.root=elsewhere",): f"--data {data} and --set data.root=elsewhere both say which data to use",
    }
    for i, (sets, expected) in enumerate(cases.items()):
        out = tmp_path / f"run{i}"
        message = refused(base + ["--out", str(out), "--set", *sets])
        assert message.startswith("latentdiff train: ") and expected in message, message
        assert not out.exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (8, 8), 128).save(flat / "a.png")
    message = refused(["train", "--preset", "tiny", "--data", str(flat), "--out", str(tmp_path / "r"),
                       "--set", "model.num_classes=3"])
    assert f"model.num_classes=3 but {flat} has no class folders (unlabelled)" in message
    message = refused(["train", "--preset", "tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert "does not exist" in message and "missing" in message
    # a text-to-image preset needs captions
    with pytest.raises(ValueError, match="text-to-image but .* has no captions"):
        resolve_data(get_preset("tiny-t2i").replace(data=DataConfig(name="folder", root=str(flat))), explicit=[])


def test_grey_16bit_palette_and_size_follow_the_data(tmp_path, capsys):
    grey = tmp_path / "grey"
    grey.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))  # mean 0.5 of white
    Image.fromarray(ramp).save(grey / "ramp16.png")
    assert Image.open(grey / "ramp16.png").mode.startswith("I")
    for i in range(5):
        Image.new("L", (32, 32), 40 * i).save(grey / f"g{i}.png")
    grey_palette = Image.new("L", (32, 32), 100).convert("P")
    grey_palette.save(grey / "pal_grey.png")
    out = run_cli(["train", "--preset", "tiny", "--data", str(grey), "--out", str(tmp_path / "g"), *TINY], capsys)
    assert f"data {grey}: 7 images; unconditional; grey (I;16, L, P) -> 1 channel; 32x32 -> 32x32" in out
    model = json.loads((tmp_path / "g" / "checkpoint" / "config.json").read_text())["model"]
    assert (model["in_channels"], model["num_classes"]) == (1, 0)  # tiny's 10 classes follow the data
    dataset = build_dataset(DataConfig(name="folder", root=str(grey), channels=1), "train")
    ramp_x = dataset[dataset.paths.index(grey / "ramp16.png")]["x"]
    assert abs(float(ramp_x.mean())) < 0.02  # 16-bit mid-grey is mid-grey, not near white

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    colour = Image.new("RGB", (48, 32), (0, 0, 0))
    ImageDraw.Draw(colour).rectangle((16, 0, 31, 31), fill=(0, 255, 0))
    colour.quantize(4).save(mixed / "palette.png")                     # a colour palette, 48x32
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(mixed / "rgba.png")
    Image.new("L", (20, 20), 50).save(mixed / "grey.png")
    for i in range(2):
        Image.new("RGB", (32, 32), (10, 20 * i, 30)).save(mixed / f"c{i}.jpg")
    run = tmp_path / "m"
    out = run_cli(["train", "--preset", "tiny", "--data", str(mixed), "--out", str(run), *TINY,
                   "data.image_size=16"], capsys)
    assert re.search(r"5 images; unconditional; colour \(L, P, RGB, RGBA\) -> 3 channels; "
                     r"mixed sizes 20x20 to 64x64 -> 16x16", out), out
    assert "centre-cropped to squares and resized to 16x16 (data.image_size)" in out
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert (config["model"]["in_channels"], config["model"]["image_size"]) == (3, 16)
    grid = tmp_path / "one.png"
    run_cli(["sample", str(run / "checkpoint"), "--n", "1", "--steps", "2", "--out", str(grid)], capsys)
    assert grid.exists()
    denoiser, _, _ = load_model(run / "checkpoint")  # what `sample` loads: it samples at the data's 16
    assert generate(denoiser, 1, steps=2).shape == (1, 3, 16, 16)
    images = build_dataset(DataConfig(name="folder", root=str(mixed), channels=3, image_size=16), "train")
    palette_x = images[images.paths.index(mixed / "palette.png")]["x"]
    assert palette_x[1, 8, 8] > 0.9 and palette_x[0, 8, 8] < -0.9  # the palette's green centre, cropped


def test_captions_from_sidecars_and_metadata(tmp_path, capsys):
    sidecars = colour_classes(tmp_path / "side", n=2)
    (sidecars / "stray.png").unlink()
    (sidecars / "cat" / "0.txt").write_text("a red disc\n")
    cfg, lines = resolve_data(get_preset("tiny").replace(data=DataConfig(name="folder", root=str(sidecars))), [])
    assert "captions from <stem>.txt for 1/4 images (unused: this preset has no text encoder)" in lines[0]
    assert cfg.model.num_classes == 2 and cfg.data.class_names == ("cat", "dog")

    meta = tmp_path / "meta"
    meta.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(meta / f"{i}.png")
    (meta / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"red {i}"}) + "\n"
                                                 for i in range(3)))
    (meta / "3.txt").write_text("from the sidecar")
    out = run_cli(["train", "--preset", "tiny", "--data", str(meta), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert "captions from <stem>.txt + metadata.jsonl for 4/4 images" in out and "unconditional" in out
    assert ImageFolder(str(meta), image_size=8).captions == ["red 0", "red 1", "red 2", "from the sidecar"]
    (meta / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl line 1: expected a JSON object"):
        ImageFolder(str(meta), image_size=8)


def test_loose_file_is_skipped_and_splits_keep_the_training_labels(tmp_path):
    root = colour_classes(tmp_path / "tree", n=1)
    with pytest.warns(UserWarning, match=r"skipped 1 image file\(s\) at the top level.*stray.png"):
        folder = ImageFolder(str(root), image_size=8)
    assert folder.class_names == ["cat", "dog"] and folder.labels.tolist() == [0, 1] and len(folder) == 2

    split = tmp_path / "split"
    for part, classes in (("train", ("cat", "dog")), ("test", ("dog",))):
        for name in classes:
            (split / part / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(split / part / name / "x.png")
    cfg, lines = resolve_data(get_preset("tiny").replace(data=DataConfig(name="folder", root=str(split))), [])
    assert "(the train/ split)" in lines[0] and cfg.data.class_names == ("cat", "dog")
    test = build_dataset(cfg.data, "test")
    assert test.labels.tolist() == [1]  # "dog" is label 1 as in training, not 0
    assert class_index(cfg, "dog") == 1 and class_index(cfg, "Cat") == 0
    with pytest.raises(ValueError, match=r"--class-label 2: out of range; classes: 0 cat, 1 dog"):
        class_index(cfg, "2")
    # an fmnist model's labels by name too
    assert class_index(get_preset("tiny"), "Trouser") == 1


def test_size_follows_data_image_size(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(small / "a.png")
    tiny = get_preset("tiny").replace(data=DataConfig(name="folder", root=str(small)))
    cfg, lines = resolve_data(tiny, [])
    assert cfg.model.image_size == cfg.data.image_size == 32
    assert any("the images are 20x20: centre-cropped to squares and resized to 32x32 (the preset's size; "
               "--set data.image_size=S to train at S)" in line for line in lines)
    cfg, _ = resolve_data(apply_overrides(tiny, ["data.image_size=64"]), ["data.image_size"])
    assert (cfg.data.image_size, cfg.model.image_size) == (64, 64)
    # Fashion-MNIST too: an explicit data.image_size carries over to the model
    cfg, _ = resolve_data(apply_overrides(get_preset("tiny"), ["data.image_size=64"]), ["data.image_size"])
    assert cfg.model.image_size == 64
    assert resolve_data(get_preset("tiny"), []) == (get_preset("tiny"), [])  # the presets as they were


def test_captioned_folder_trains_a_text_to_image_preset(tmp_path, capsys):
    data = tmp_path / "captioned"
    data.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 0, 0)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a red square number {i}")
    run = tmp_path / "t2i"
    out = run_cli(["train", "--preset", "tiny-t2i", "--data", str(data), "--out", str(run), *TINY], capsys)
    assert f"data {data}: 8 images; captions from <stem>.txt for 8/8 images (text conditioning); " in out
    out = run_cli(["sample", str(run / "checkpoint"), "--prompt", "a red square number 3", "--n", "2",
                   "--out", str(tmp_path / "t.png")], capsys)
    assert "wrote" in out and (tmp_path / "t.png").exists()
