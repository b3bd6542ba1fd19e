"""``tansaku add`` and ``tansaku delete``: change an index in place, without a full rebuild."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_input_options, emit_json, logger, read_inputs


def add_add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "add",
        help="add or replace documents in an index (no full rebuild)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Upsert the documents of FILES into INDEX by id: new ids are added, existing ids
replaced. Only these documents are tokenised and encoded; BM25 statistics are
recomputed (scores equal a fresh build's) and FAISS gets the new vectors without
retraining. Like a build, the update is staged and swapped in atomically:
searches keep working and see the old or the new index, and bad input changes
nothing.""",
        epilog="examples:\n  tansaku add my-index new-docs.jsonl\n",
    )
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("inputs", nargs="+", type=Path, help="document files (.jsonl/.csv/.tsv, .gz)")
    add_input_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the update summary as JSON")
    p.set_defaults(handler=run_update, op="add")


def add_delete(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "delete",
        help="delete documents from an index by id (no full rebuild)",
        description="Delete documents by id; staged and swapped in atomically like `add`. "
        "Unknown ids are an error (nothing is deleted) unless --missing-ok.",
        epilog="examples:\n  tansaku delete my-index --ids doc-1 doc-7\n"
        "  tansaku delete my-index --ids-file stale.txt --missing-ok\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("--ids", nargs="+", default=[], help="document ids to delete")
    p.add_argument("--ids-file", type=Path, help="a file with one id per line")
    p.add_argument("--missing-ok", action="store_true", help="ignore ids not in the index")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the update summary as JSON")
    p.set_defaults(handler=run_update, op="delete", inputs=[])


def run_update(args: argparse.Namespace) -> int:
    from tansaku.index.errors import IngestError, TansakuError
    from tansaku.index.update import update_index

    delete = list(getattr(args, "ids", []) or [])
    if getattr(args, "ids_file", None):
        try:
            text = args.ids_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise IngestError(f"cannot read the --ids-file: {reason}", source=str(args.ids_file)) from None
        delete += [line.strip() for line in text.splitlines() if line.strip()]
    if args.op == "delete" and not delete:
        raise TansakuError("nothing to delete: give --ids or --ids-file")
    records = read_inputs(args, args.inputs) if args.inputs else ()
    report = update_index(
        args.index,
        records,
        delete,
        missing_ok=getattr(args, "missing_ok", False),
        progress=not args.quiet,
        log=logger(args),
    )
    if args.json:
        emit_json(report.to_dict())
    else:
        print(
            f"updated {args.index}: {report.added} added, {report.replaced} replaced, "
            f"{report.deleted} deleted; {report.docs:,} documents ({report.seconds:.1f} s)"
        )
    return 0
