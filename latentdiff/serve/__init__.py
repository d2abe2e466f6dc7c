"""``latentdiff serve``: a web page and an HTTP API over the checkpoints of one or more run folders.

Why FastAPI and a page of our own rather than Gradio (the field's convention): the server is one small
app (FastAPI + uvicorn: a handful of small pure-Python packages, where Gradio brings a large wheel with
its own bundled frontend and dozens of dependencies) that serves the page and the documented JSON API
from the same request queue, so the page is just another API client; live progress, the x0 preview and
cancellation use the samplers' ``callback`` directly (a job polled by the page, stopped at its next
step), not a framework's event model; and the page is static HTML and vanilla JS with fixed element ids,
which a browser test can drive without depending on a framework's generated DOM.

* ``serve.models``: finding checkpoints, naming them, what each can do (``GET /api/models``);
* ``serve.schema``: the request body and the server's limits; ``serve.plan``: a request checked
  against its model; ``serve.uploads``: uploads decoded with the decompression-bomb guard on;
* ``serve.engine``: running a request through ``pipelines.generate`` (PNGs with ``io.png_meta``'s chunks);
* ``serve.jobs``: the one queue (concurrency, queue limit, timeouts, cancel); ``serve.app``: the routes.
"""

from latentdiff.serve.app import ServeSettings, create_app, running_server
from latentdiff.serve.models import ModelRegistry
from latentdiff.serve.schema import ServeLimits

__all__ = ["ModelRegistry", "ServeLimits", "ServeSettings", "create_app", "running_server"]
