"""``tansaku check``: verify every file of an index against its checksums, and its structure."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import emit_json, say

CHECK_DESCRIPTION = """\
Verify the index at INDEX without changing it: every file against the size and
CRC-32 checksum its build or update recorded in manifest.json, then the index's
structure (array headers and shapes, postings within the corpus and in order,
term frequencies and document lengths agreeing, the id map against the corpus's
rows, SQLite's own quick_check, the FAISS index readable with one vector per
document), shard by shard.

Prints one line per problem (the file, then what is wrong with it) and exits 2,
or prints "ok" and exits 0. An index built before checksums were recorded is
checked for structure only and says so; updating or rebuilding it records them.

Opening an index (search, serve) makes only the cheap checks (sizes, headers,
offsets, analyzer); this reads every byte (about 5 GB/s from the page cache).
A damaged index: rebuild it, or restore it from a backup."""


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="verify every file of an index (checksums and structure)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=CHECK_DESCRIPTION,
        epilog="examples:\n  tansaku check my-index\n  tansaku check my-index --json\n",
    )
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 when the index is healthy, 2 when it is damaged (a TansakuError: not an index)."""
    from tansaku.index.verify import verify_index

    report = verify_index(args.index)
    if args.json:
        emit_json(report.to_dict())
    else:
        for problem in report.problems:
            print(f"{problem.file}: {problem.message}")
        if report.ok:
            how = (
                f"{report.files} files match their checksums"
                if report.checksums
                else "structure only: no checksums recorded (an index written before them); "
                "update or rebuild it to record them"
            )
            print(f"ok: {args.index} ({how})")
    if report.ok:
        return 0
    say(
        f"{args.index} is damaged ({len(report.problems)} problem(s)): rebuild the index or restore it "
        "from a backup"
    )
    return 2
