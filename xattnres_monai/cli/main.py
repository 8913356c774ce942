"""The program of ``python -m xattnres_monai <command>`` (console script ``xattnres-monai``): the user-facing commands.

- ``predict``: masks for new scans from a trained bundle (:mod:`xattnres_monai.cli.predict`);
- ``demo``: the embedded-default demo (:mod:`xattnres_monai.demo`, as ``make demo``).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

COMMANDS = {
    "predict": "segment new scans with a trained bundle",
    "routing": "see the learned XAttnRes routing of a trained bundle",
    "demo": "the demo: train, evaluate, predict",
}


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
        print("usage: python -m xattnres_monai <command> [options]   (xattnres-monai <command>)\n\ncommands:")
        print("\n".join(lines))
        print("\n<command> --help shows its options.")
        raise SystemExit(0 if argv[:1] in ([], ["-h"], ["--help"]) else 2)
    command, rest = argv[0], argv[1:]
    if command == "predict":
        from xattnres_monai.cli.predict import main as run
    elif command == "routing":
        from xattnres_monai.cli.routing import main as run
    else:
        from xattnres_monai.demo import main as run
    run(rest)
