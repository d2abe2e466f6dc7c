"""Running ``latentdiff`` in-process for tests, with what a user would see of it."""

from __future__ import annotations

from latentdiff.cli.main import main


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``latentdiff ARGV`` -> (exit code, stdout, stderr), stderr as the process would write it: a
    ``SystemExit("message")`` is printed by the interpreter at exit, with status 1."""
    capsys.readouterr()
    code, message = 0, ""
    try:
        main(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, int) or exit_.code is None:
            code = exit_.code or 0
        else:
            code, message = 1, f"{exit_.code}\n"
    out, err = capsys.readouterr()
    return code, out, err + message


def train_tiny_t2i_and_controlnet(root, base: str = "base", controlnet: str = "cn"):
    """A tiny text-to-image run ``root/base`` and a tiny ControlNet ``root/cn`` over it (each a few
    steps of its tiny preset) -> root."""
    main(["train", "--preset", "tiny-t2i", "--out", str(root / base)])
    main(["train", "--preset", "tiny-controlnet", "--out", str(root / controlnet),
          "--set", f"base={root / base / 'checkpoint'}"])
    return root
