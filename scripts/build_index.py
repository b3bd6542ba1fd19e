#!/usr/bin/env python3
"""Build a tansaku index: the same code and options as `tansaku build` (see --help)."""

import sys

from tansaku.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
