"""``python -m umt.eval SUBCOMMAND ...``: dispatch to the subcommand's module (:data:`umt.eval.SUBCOMMANDS`)."""

from __future__ import annotations

import importlib
import sys

import umt  # noqa: F401 - torchvision shim before timm/open_clip
from umt.eval import SUBCOMMANDS


def _usage() -> str:
    rows = "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in SUBCOMMANDS.items())
    return f"usage: python -m umt.eval SUBCOMMAND [--help] ...\n\nsubcommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the subcommand's exit status (2: unknown or missing subcommand)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"umt.eval: unknown subcommand {name!r}\n{_usage()}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    # modules serving several subcommands (knn, linear) take the name first
    return int(module.main([name, *rest]) if getattr(module, "MULTI_COMMAND", False) else module.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())
