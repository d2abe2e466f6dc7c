"""The web page of ``latentdiff serve`` in headless Chromium (Playwright, driving Debian's ``chromium``):
pick a model, type a prompt, generate, and get exactly the API's image for the same parameters; download
it with its parameters inside; generate with a ControlNet from an uploaded control image; restore the
form from a PNG's parameters, chosen in the file input and dropped on the drop zone.

Skipped, saying what to install, where Playwright or Chromium cannot be found. A screenshot of the page
after a generation goes to ``$LATENTDIFF_SCREENSHOT_DIR/serve_page.png`` when that is set (the README's
``docs/serve_page.png``), else to the test's temporary folder.
"""

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from clirun import train_tiny_t2i_and_controlnet
from latentdiff.io.png_meta import parameters_text, parse_parameters, png_bytes, read_png_parameters

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture skips, saying what to install
    expect = sync_playwright = None

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
PROMPT = "a small red circle in the center"
TIMEOUT_MS = 60_000


def _chromium() -> str | None:
    given = os.environ.get("LATENTDIFF_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    found = [path for path in CHROMIUM_CANDIDATES if os.access(path, os.X_OK)]
    return found[0] if found else shutil.which("chromium")


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.skip("Playwright is not installed: pip install playwright (the dev extra: pip install -e '.[dev]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (looked for /usr/bin/chromium, LATENTDIFF_CHROMIUM and chromium on "
                    "PATH): apt-get install chromium (make browser); `playwright install` needs a network we lack")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of runs: a tiny text-to-image model (``t2i``) and a tiny ControlNet over it (``cn``)."""
    return train_tiny_t2i_and_controlnet(tmp_path_factory.mktemp("serve_runs"), base="t2i")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """``latentdiff serve RUNS`` on a free loopback port, as a user starts it -> its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", "from latentdiff.cli.main import main; main()", "serve",
                                    str(runs), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"latentdiff serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/api/models", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"latentdiff serve did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.goto(server + "/")
    yield tab
    context.close()
    assert not errors, f"the page raised: {errors}"


def _api(server: str, path: str, body: dict | None = None):
    request = urllib.request.Request(server + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def _image_bytes(page, locator) -> bytes:
    """The bytes of an <img>'s source (a data:, blob: or http URL), fetched by the page itself."""
    data = locator.evaluate("""async img => {
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let text = ""; for (const b of bytes) text += String.fromCharCode(b); return btoa(text); }""")
    return base64.b64decode(data)


def _choose_model(page, name: str) -> None:
    page.wait_for_selector(f"#model option[value='{name}']", state="attached")
    page.select_option("#model", name)


def _generate(page):
    """Click #generate on a fresh page and wait for its result and the "done" status -> the img.result."""
    page.click("#generate")
    results = page.locator("#gallery img.result")
    expect(results).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("done", timeout=TIMEOUT_MS)
    expect(page.locator("#error")).to_be_empty()
    return results.first  # the page puts the newest result first


def _form_request(page, model: str) -> dict:
    """The form's sampling fields as the API takes them."""
    values = page.evaluate("""() => Object.fromEntries(['sampler', 'steps', 'spacing', 'guidance', 'threshold',
        'seed', 'negative-prompt'].map(id => [id, document.getElementById(id).value]))""")
    return {"model": model, "prompt": page.input_value("#prompt"), "negative_prompt": values["negative-prompt"],
            "sampler": values["sampler"], "steps": int(values["steps"]), "spacing": values["spacing"],
            "guidance": float(values["guidance"]), "threshold": values["threshold"], "seed": int(values["seed"]),
            "n": 1}


def test_the_page_generates_the_apis_image_and_downloads_it_with_its_parameters(page, server, tmp_path):
    models = {m["name"]: m for m in _api(server, "/api/models")}
    assert models["t2i"]["text"] and models["cn"]["controlnet"]
    _choose_model(page, "t2i")
    assert page.locator("#text-section").is_visible() and not page.locator("#control-section").is_visible()
    page.fill("#prompt", PROMPT)
    page.fill("#seed", "1234")
    page.fill("#steps", "3")
    image = _generate(page)
    assert image.get_attribute("data-seed") == "1234"
    shown = _image_bytes(page, image)
    request = _form_request(page, "t2i")
    assert request["steps"] == 3 and request["seed"] == 1234 and request["prompt"] == PROMPT
    api = _api(server, "/api/generate", request)
    assert api["seeds"] == [1234] and api["model"] == "t2i"
    expected = base64.b64decode(api["images"][0])
    assert np.array_equal(_pixels(shown), _pixels(expected))
    other = base64.b64decode(_api(server, "/api/generate", {**request, "seed": 1235})["images"][0])
    assert not np.array_equal(_pixels(other), _pixels(expected))  # so the equality above says something
    assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")  # the live preview
    assert page.evaluate("() => [document.getElementById('progress').value, document.getElementById('progress').max]"
                         ) == [3, 3]
    shots = Path(os.environ.get("LATENTDIFF_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "serve_page.png"), full_page=True)

    with page.expect_download() as download:
        page.locator("#gallery a.download").first.click()
    link = page.locator("#gallery a.download").first.get_attribute("download")
    assert download.value.suggested_filename == link and link.endswith(".png") and "1234" in link
    saved = Path(download.value.path()).read_bytes()
    assert np.array_equal(_pixels(saved), _pixels(expected))
    text, extra = read_png_parameters(saved)
    fields = parse_parameters(text)
    assert {k: fields[k] for k in ("prompt", "seed", "steps", "model", "sampler", "guidance", "spacing")} == {
        "prompt": PROMPT, "seed": 1234, "steps": 3, "model": "t2i", "sampler": request["sampler"],
        "guidance": request["guidance"], "spacing": request["spacing"]}
    assert fields["size"] == f"{models['t2i']['image_size']}x{models['t2i']['image_size']}"
    assert extra["request"]["seed"] == 1234


def test_a_controlnet_model_generates_from_an_uploaded_control_image(page, server, tmp_path):
    control = tmp_path / "edges.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) > 0.8).astype(np.uint8) * 255).save(control)
    _choose_model(page, "cn")
    assert page.locator("#control-section").is_visible()
    page.set_input_files("#control-image", str(control))
    page.wait_for_function("() => state.control !== null")  # the page reads the file (FileReader) before use
    page.fill("#prompt", PROMPT)
    page.fill("#seed", "7")
    page.fill("#steps", "2")
    image = _generate(page)
    shown = _image_bytes(page, image)
    fields = parse_parameters(read_png_parameters(shown)[0])
    assert fields["model"] == "cn" and fields["seed"] == 7 and fields["steps"] == 2
    request = {**_form_request(page, "cn"), "control": base64.b64encode(control.read_bytes()).decode()}
    api = _api(server, "/api/generate", request)
    assert np.array_equal(_pixels(shown), _pixels(base64.b64decode(api["images"][0])))


KNOWN = {"prompt": "a large blue square, above\na small green triangle", "negative_prompt": "a red circle",
         "steps": 7, "sampler": "ddim", "guidance": 4.5, "seed": 424242, "size": "32x32", "model": "t2i",
         "spacing": "trailing", "threshold": "none"}


def _known_png(path: Path, params: dict, a1111_only: bool = False) -> Path:
    """A PNG with ``params`` in its chunks; ``a1111_only``: only the ``parameters`` text, as AUTOMATIC1111
    writes it (no ``latentdiff`` JSON), so that the page restores from the parsed text."""
    image = Image.new("RGB", (32, 32), (90, 30, 160))
    if a1111_only:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters_text(params))
        image.save(path, format="PNG", pnginfo=info)
    else:
        path.write_bytes(png_bytes(image, params))
    return path


def _expect_form(page, params: dict) -> None:
    expect(page.locator("#prompt")).to_have_value(params["prompt"])
    expect(page.locator("#negative-prompt")).to_have_value(params["negative_prompt"])
    expect(page.locator("#seed")).to_have_value(str(params["seed"]))
    expect(page.locator("#steps")).to_have_value(str(params["steps"]))
    expect(page.locator("#sampler")).to_have_value(params["sampler"])
    assert float(page.input_value("#guidance")) == params["guidance"]
    expect(page.locator("#spacing")).to_have_value(params["spacing"])
    expect(page.locator("#threshold")).to_have_value(params["threshold"])


def test_a_png_chosen_or_dropped_restores_the_form(page, tmp_path):
    _choose_model(page, "cn")  # a PNG of another model switches the picker back to it
    page.set_input_files("#png-input", str(_known_png(tmp_path / "known.png", KNOWN)))
    expect(page.locator("#model")).to_have_value("t2i")
    _expect_form(page, KNOWN)

    dropped = {**KNOWN, "prompt": "dropped: a small yellow square", "seed": 99, "steps": 5, "sampler": "euler",
               "guidance": 1.5, "negative_prompt": "a circle", "spacing": "karras", "threshold": "static"}
    data = base64.b64encode(_known_png(tmp_path / "dropped.png", dropped, a1111_only=True).read_bytes()).decode()
    page.evaluate("""data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const zone = document.getElementById("drop-zone");
        for (const type of ["dragenter", "dragover", "drop"])
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", data)
    _expect_form(page, dropped)
