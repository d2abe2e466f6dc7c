"""``latentdiff serve [RUNS_DIR or CKPT ...]``: the web page and HTTP API (``latentdiff.serve``)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

DEFAULT_PATHS = ("runs", "demo_out")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def network_warning(host: str) -> str | None:
    """The warning printed when the server listens beyond this machine (None on loopback)."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}: the server is reachable from the network and has no authentication; "
            "anyone who can reach it can use its models and its CPU/GPU time (bind to 127.0.0.1, the default, "
            "or put an authenticating proxy in front)")


def resolved_device(device: str) -> str:
    """``--device auto``: CUDA where there is a GPU, else the CPU; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_serve(args) -> None:
    import uvicorn

    from latentdiff.serve import ModelRegistry, ServeLimits, ServeSettings, create_app

    limits = ServeLimits(max_steps=args.max_steps, max_images=args.max_images, max_upload_mb=args.max_upload_mb,
                         max_pixels=args.max_pixels)
    settings = ServeSettings(limits=limits, concurrency=args.concurrency, max_queue=args.max_queue,
                             timeout=args.timeout, max_loaded=args.max_loaded, use_ema=not args.no_ema,
                             device=resolved_device(args.device))
    paths = args.paths or [p for p in DEFAULT_PATHS if Path(p).is_dir()]
    if not paths:
        sys.exit("latentdiff serve: give run folders or checkpoints (no runs/ or demo_out/ here)")
    registry = ModelRegistry(paths)
    for note in registry.skipped:
        print(f"note: skipped {note}", file=sys.stderr)
    if not len(registry):
        sys.exit(f"latentdiff serve: no servable checkpoint in {', '.join(map(str, paths))}")
    print(f"serving {len(registry)} model(s) on {settings.device}: {', '.join(registry.models)}"
          + (f"; upscalers: {', '.join(registry.upscalers)}" if registry.upscalers else ""))
    warning = network_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"open http://{shown}:{args.port}/ (API: /api/models, /api/generate; README, 'Web UI and HTTP API')")
    uvicorn.run(create_app(registry, settings), host=args.host, port=args.port, log_level=args.log_level)


def add_serve_parser(sub) -> None:
    """Register ``latentdiff serve`` on the sub-parsers ``sub``."""
    p = sub.add_parser("serve", help="a web page and an HTTP API over your checkpoints (prompt, sampler, "
                       "ControlNet, LoRA, live preview, PNGs with their parameters)")
    p.add_argument("paths", nargs="*", metavar="RUNS_DIR|CKPT", help="checkpoint directories, or folders searched "
                   "for */checkpoint (default: runs/ and demo_out/ where they exist)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback (e.g. 0.0.0.0) "
                   "makes the server reachable from the network, without authentication")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--concurrency", type=int, default=1, help="requests sampled at the same time, each by its own "
                   "worker thread")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait; more are refused with 429")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take, waiting included "
                   "(504 after)")
    p.add_argument("--max-steps", type=int, default=200, help="sampling steps per request at most")
    p.add_argument("--max-images", type=int, default=16, help="images per request at most")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="size of an uploaded image at most, in MB")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="pixels of an uploaded image at most "
                   "(also Pillow's decompression-bomb limit)")
    p.add_argument("--max-loaded", type=int, default=2, help="models kept loaded in memory")
    p.add_argument("--device", default="auto", help="where the models run: auto (CUDA where there is a GPU, else "
                   "CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level")
    p.set_defaults(func=cmd_serve)


__all__ = ["add_serve_parser", "cmd_serve", "is_loopback", "network_warning"]

