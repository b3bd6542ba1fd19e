"""The ``tansaku`` command line (``tansaku COMMAND --help``): one module per command family."""

from .main import main, make_parser

__all__ = ["main", "make_parser"]
