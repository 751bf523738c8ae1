#!/usr/bin/env python
"""Build WebDataset video shards: ``python tools/make_shards.py INPUT... --out DIR`` (see ``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout without installing

from umt.data.build.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
