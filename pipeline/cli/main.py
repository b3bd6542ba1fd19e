"""The ``tansaku`` parser and entry point: every command's module registers its subcommand."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tansaku import __version__

from .build import add_build
from .check import add_check
from .evaluate import add_eval
from .models import add_models
from .options import say
from .search import add_rerank, add_search
from .serve import add_serve
from .train import add_train_reranker
from .update import add_add, add_delete

Handler = Callable[[argparse.Namespace], int]

COMMANDS = (
    add_build,
    add_search,
    add_rerank,
    add_eval,
    add_add,
    add_delete,
    add_check,
    add_serve,
    add_models,
    add_train_reranker,
)

VERBOSE_HELP = (
    "show the model libraries' output while models load (transformers' 'Loading weights' "
    "bars and load reports, huggingface_hub's download bars); hidden by default"
)


def make_parser() -> argparse.ArgumentParser:
    """The ``tansaku`` parser with every command registered (cheap: no command's imports run)."""
    parser = argparse.ArgumentParser(
        prog="tansaku",
        description="tansaku (探索): Japanese-first retrieve-and-rerank search. "
        "Run `tansaku COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"tansaku {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    # Also after the command (`tansaku search ... --verbose`); SUPPRESS: a subcommand that is not
    # given it must not reset the global one.
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    # Raise instead of dying, so cleanup (e.g. a build's temporary directory) runs.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tansaku ARGV``; the exit status (2: a TansakuError, said in one line on stderr)."""
    args = make_parser().parse_args(argv)
    handler: Handler = args.handler
    # after parsing: `--help` and argument errors import nothing of tansaku.index
    from tansaku.index.encoders.hub import set_verbose_loading
    from tansaku.index.errors import TansakuError

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    verbose_before = set_verbose_loading(args.verbose)
    try:
        return handler(args)
    except TansakuError as exc:
        say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:
        # `tansaku search ... | head`: the reader went away; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        set_verbose_loading(verbose_before)  # main() may run again in this process
