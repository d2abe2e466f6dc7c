"""The README's screenshot of `latentdiff serve`: the page in headless Chromium (Playwright, Debian's
chromium) after two generations on runs/backbones/unet-flow (`make backbones` trains it). Writes
docs/serve_page.png. Run from the repository root: .venv/bin/python docs/serve_screenshot.py"""
import subprocess, sys, time, urllib.request
from playwright.sync_api import sync_playwright, expect
port = 7911
proc = subprocess.Popen([sys.executable, "-c", "from latentdiff.cli.main import main; main()", "serve",
                         "runs/backbones/unet-flow/checkpoint", "--port", str(port), "--log-level", "warning"])
try:
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=2); break
        except OSError:
            time.sleep(0.5)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = b.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(240_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#model option", state="attached")
        for seed, prompt in ((3, "a large red circle left of a small blue square"),
                             (5, "a small green triangle above a large yellow square")):
            page.fill("#prompt", prompt); page.fill("#seed", str(seed)); page.fill("#n", "3")
            page.click("#generate")
            expect(page.locator("#status")).to_have_text("done", timeout=240_000)
        page.screenshot(path="docs/serve_page.png", full_page=True)
        print(page.locator("#gallery img.result").count(), page.input_value("#steps"), page.input_value("#sampler"))
        b.close()
finally:
    proc.terminate(); proc.wait()
