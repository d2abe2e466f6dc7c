"""Generation parameters in PNGs (io.png_meta): the AUTOMATIC1111 ``parameters`` text written and parsed
back (multi-line prompts, commas, negative prompts, missing and foreign fields, any text), the chunks through
a real PNG file, grids saved with them keeping their pixels, and ``latentdiff sample`` writing them."""

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from latentdiff.cli.main import main
from latentdiff.io.images import save_grid, save_image, save_prompt_rows
from latentdiff.io.png_meta import parameters_text, parse_parameters, png_bytes, read_png_parameters

FULL = {"prompt": "a red circle, left of a blue square", "negative_prompt": "blurry, dark", "steps": 20,
        "sampler": "dpmpp_2m", "guidance": 3.5, "seed": 7, "size": "32x32", "model": "shapes-t2i",
        "spacing": "karras", "threshold": "dynamic", "class_label": "4"}


def test_every_field_round_trips_with_commas_in_the_prompts():
    text = parameters_text(FULL)
    assert text.split("\n") == [
        "a red circle, left of a blue square", "Negative prompt: blurry, dark",
        "Steps: 20, Sampler: dpmpp_2m, CFG scale: 3.5, Seed: 7, Size: 32x32, Model: shapes-t2i, Spacing: karras, "
        "Threshold: dynamic, Class: 4"]
    assert parse_parameters(text) == FULL


def test_multi_line_prompts_and_negative_prompts_round_trip():
    params = {"prompt": "line one, with a comma\nline two: a colon\n\nafter a blank line",
              "negative_prompt": "first\nsecond, too", "steps": 3, "seed": 0}
    assert parse_parameters(parameters_text(params)) == params
    params = {"prompt": "Steps: 5, Seed: 9\na prompt line that looks like keys", "steps": 2}
    assert parse_parameters(parameters_text(params)) == params  # only the last line holds the keys


def test_missing_fields_are_left_out_and_not_invented():
    text = parameters_text({"prompt": "a cat", "steps": 4, "seed": None, "negative_prompt": ""})
    assert text == "a cat\nSteps: 4"
    assert parse_parameters(text) == {"prompt": "a cat", "steps": 4}
    assert parse_parameters(parameters_text({"steps": 1, "sampler": "ddim"})) == {"prompt": "", "steps": 1,
                                                                                   "sampler": "ddim"}
    with pytest.raises(ValueError, match="not an AUTOMATIC1111 parameters text"):
        parse_parameters("just a caption, no keys")


def test_values_and_lists_never_break_the_key_line():
    params = {"prompt": "p", "model": "odd, name\nhere", "control_scale": [1.0, 0.5], "lora": ["a.safetensors:0.8"]}
    got = parse_parameters(parameters_text(params))
    assert got == {"prompt": "p", "model": "odd  name here", "control_scale": [1.0, 0.5], "lora": "a.safetensors:0.8"}


def test_a_foreign_a1111_text_keeps_its_own_keys():
    text = ("masterpiece, a castle\nNegative prompt: lowres\nSteps: 28, Sampler: Euler a, CFG scale: 7, "
            "Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned, Clip skip: 2")
    assert parse_parameters(text) == {"prompt": "masterpiece, a castle", "negative_prompt": "lowres", "steps": 28,
                                      "sampler": "Euler a", "guidance": 7.0, "seed": 1234, "size": "512x768",
                                      "Model hash": "6ce0161689", "model": "v1-5-pruned", "Clip skip": "2"}


_PROMPT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda s: not any(line.startswith("Negative prompt: ") for line in s.split("\n")))  # A1111's own ambiguity


@settings(max_examples=200, deadline=None)
@given(prompt=_PROMPT, negative=_PROMPT, steps=st.integers(1, 1000), seed=st.integers(0, 2**63),
       guidance=st.floats(0, 30, allow_nan=False), sampler=st.sampled_from(["dpmpp_2m", "ddim", "euler_a"]),
       dropped=st.sets(st.sampled_from(["steps", "seed", "guidance", "sampler"]), max_size=3))
def test_any_prompt_round_trips(prompt, negative, steps, seed, guidance, sampler, dropped):
    params = {"prompt": prompt, "negative_prompt": negative, "steps": steps, "seed": seed, "guidance": guidance,
              "sampler": sampler, "size": "8x8"}
    params = {k: v for k, v in params.items() if k not in dropped and v != "" or k == "prompt"}
    assert parse_parameters(parameters_text(params)) == params


def test_the_chunks_survive_a_png_file_with_any_unicode():
    params = {**FULL, "prompt": "ein Würfel, 立方体 \u2603\nzweite Zeile", "negative_prompt": "ärger"}
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    data = png_bytes(image, params, {"model": {"channels": 8}})
    text, extra = read_png_parameters(data)
    assert parse_parameters(text) == params
    assert extra == {"request": params, "config": {"model": {"channels": 8}}}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))
    plain = io.BytesIO()
    image.save(plain, format="PNG")
    assert read_png_parameters(plain.getvalue()) == (None, None)


def test_saved_grids_carry_the_parameters_and_keep_their_pixels(tmp_path):
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    params = {"prompt": "a, b\nc", "steps": 3, "seed": 1}
    for name, save in (("grid", lambda p, **kw: save_grid(images, p, caption="a caption", **kw)),
                       ("image", lambda p, **kw: save_image(images[0], p, **kw)),
                       ("rows", lambda p, **kw: save_prompt_rows(images, ["a, b", "c"], p, **kw))):
        with_meta, without = tmp_path / f"{name}_meta.png", tmp_path / f"{name}.png"
        save(with_meta, parameters=params, config={"k": 1})
        save(without)
        text, extra = read_png_parameters(with_meta.read_bytes())
        assert parse_parameters(text) == params and extra == {"request": params, "config": {"k": 1}}, name
        assert read_png_parameters(without.read_bytes()) == (None, None), name
        assert np.array_equal(np.asarray(Image.open(with_meta)), np.asarray(Image.open(without))), name


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "tiny-t2i-run"
    main(["train", "--preset", "tiny-t2i", "--out", str(out)])
    return out / "checkpoint"


def test_latentdiff_sample_writes_its_arguments_into_the_png(t2i_ckpt, tmp_path):
    prompt = "a small red circle, in the center\nand a blue square"
    out = tmp_path / "grid.png"
    main(["sample", str(t2i_ckpt), "--prompt", prompt, "--negative-prompt", "a green triangle, large",
          "--n", "3", "--steps", "3", "--sampler", "ddim", "--spacing", "trailing", "--guidance", "2.5",
          "--threshold", "static", "--seed", "11", "--out", str(out)])
    text, extra = read_png_parameters(out.read_bytes())
    assert parse_parameters(text) == {"prompt": prompt, "negative_prompt": "a green triangle, large", "steps": 3,
                                      "sampler": "ddim", "guidance": 2.5, "seed": 11, "size": "32x32",
                                      "model": "tiny-t2i-run", "spacing": "trailing", "threshold": "static"}
    assert extra["request"]["n"] == 3 and extra["request"]["prompts"] == [prompt]
    saved = json.loads((t2i_ckpt / "config.json").read_text())
    assert extra["config"] == saved  # the checkpoint's own config
    rows = tmp_path / "rows.png"  # the run's grid prompts, one row each: all of them, one per line
    main(["sample", str(t2i_ckpt), "--n", "4", "--steps", "2", "--out", str(rows)])
    text, extra = read_png_parameters(rows.read_bytes())
    fields = parse_parameters(text)
    assert fields["prompt"].split("\n") == extra["request"]["prompts"] and len(extra["request"]["prompts"]) > 1
    assert fields["steps"] == 2 and fields["seed"] == 0 and "negative_prompt" not in fields


def test_a_class_grid_records_its_class(tmp_path):
    run = tmp_path / "classes"
    main(["train", "--preset", "tiny", "--out", str(run), "--set", "train.max_steps=1"])
    out = tmp_path / "class.png"
    main(["sample", str(run / "checkpoint"), "--class-label", "3", "--n", "2", "--steps", "2", "--out", str(out)])
    fields = parse_parameters(read_png_parameters(out.read_bytes())[0])
    assert fields["class_label"] == "3" and fields["model"] == "classes" and fields["steps"] == 2
