"""``tansaku eval``: retrieval/reranking quality per stage, run files, paired comparisons."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .options import add_filter_option, add_rerank_options, emit_json, make_reranker, parse_filter_arg


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure retrieval/reranking quality (nDCG, MRR, recall) per stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Three ways to evaluate (metrics by trec_eval through pytrec_eval):

  tansaku eval INDEX --queries Q --qrels QRELS [--reranker M]
      run the pipeline on every judged query; one row per stage (first stage,
      and first stage + rerank); each stage's TREC run file goes to --out.
  tansaku eval --run RUN [--run RUN2] --qrels QRELS
      score existing TREC run files; with two runs, a paired comparison
      (t-test and randomisation test) per metric says whether B beats A.
  tansaku eval --candidates FILE [--reranker M]
      JQaRA-style data (q_id, question, passage_row_id, title, text, label):
      each query's own candidates ranked by BM25 and by the reranker.

Queries: JSONL ({"id": ..., "text": ...}) or TSV (qid<TAB>text). Qrels and
runs: TREC format, plain or .gz.

Means are over the judged queries that were evaluated (those with a text in
--queries, or those in the --run), as trec_eval does; how many judged queries were
left out is said on stderr. -c/--complete averages over every judged query instead,
one that was not evaluated counting 0 (trec_eval -c).""",
    )
    p.add_argument("index", nargs="?", type=Path, help="index directory")
    p.add_argument("--queries", type=Path, help="queries (JSONL or TSV)")
    p.add_argument("--qrels", type=Path, help="relevance judgements (TREC qrels)")
    p.add_argument("--run", type=Path, action="append", help="TREC run file(s) to score")
    p.add_argument("--candidates", type=Path, help="JQaRA-style candidates file")
    p.add_argument(
        "--metrics",
        default="ndcg@10,mrr@10,recall@10,recall@100",
        help="comma-separated: ndcg@K, mrr@K, recall@K, map@K, p@K",
    )
    p.add_argument(
        "-c",
        "--complete",
        action="store_true",
        help="average over every judged query in --qrels, counting those with no query text "
        "(or not in the --run) as 0, like trec_eval -c (default: over the evaluated ones)",
    )
    p.add_argument("--mode", choices=["bm25", "dense", "hybrid"], help="first stage")
    p.add_argument("--retrieve-k", type=int, default=100, help="first-stage candidates")
    p.add_argument("--fusion", choices=["score", "rrf"], default="score", help="hybrid fusion")
    add_filter_option(p)
    add_rerank_options(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="directory for the stages' TREC run files (default: runs/); a directory holding "
        "anything but earlier *.run files is refused",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from tansaku.index.errors import TansakuError

    from ..eval.metrics import judged_subset, per_query
    from ..eval.trec import read_qrels, read_queries, read_run, write_run

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.filter is not None and (args.run or args.candidates):
        raise TansakuError("--filter applies to searching an INDEX, not to --run or --candidates")
    if args.run:
        if not args.qrels:
            raise TansakuError("--run needs --qrels")
        if len(args.run) > 2:
            raise TansakuError("give one --run to score, or two to compare")
        qrels = read_qrels(args.qrels)
        runs = [read_run(path) for path in args.run]
        judged = [judged_subset(qrels, run, args.complete) for run in runs]
        scores = [per_query(j, run, metrics) for j, run in zip(judged, runs, strict=True)]
        means = [{m: sum(v.values()) / max(1, len(v)) for m, v in s.items()} for s in scores]
        out: dict[str, Any] = {
            "runs": [
                {"run": str(p), "metrics": m, "queries": len(j), "judged_not_in_run": _absent(qrels, r)}
                for p, m, j, r in zip(args.run, means, judged, runs, strict=True)
            ]
        }
        for entry in out["runs"]:
            _note_left_out(entry["judged_not_in_run"], len(qrels), f"not in {entry['run']}", args.complete)
        if len(runs) == 2:
            from ..eval.evaluation import compare

            # both systems on the same queries: those either run evaluated (or all judged, -c)
            both = judged_subset(qrels, set(runs[0]) | set(runs[1]), args.complete)
            paired = [per_query(both, run, metrics) for run in runs]
            out["comparison"] = [compare(paired[0][m], paired[1][m], m).to_dict() for m in metrics]
        if args.json:
            emit_json(out)
            return 0
        for entry in out["runs"]:
            print(entry["run"] + "  " + "  ".join(f"{m} {v:.4f}" for m, v in entry["metrics"].items()))
        for c in out.get("comparison", []):
            print(
                f"{c['metric']}: B - A = {c['delta']:+.4f} ({c['wins']} wins, "
                f"{c['losses']} losses); paired t-test p = {c['t_test_p']:.4g}, "
                f"randomisation p = {c['randomization_p']:.4g}"
            )
        return 0
    # Only here: scoring run files needs none of the search stack (numba, scipy) this loads.
    from tansaku.index.paths import check_output_dir

    from ..eval.evaluation import evaluate_candidates, evaluate_pipeline, format_table

    # Checked before the (long) evaluation: --out only ever holds the stages' run files.
    out_dir = check_output_dir(
        args.out,
        what="run files",
        ours=lambda d: all(e.is_file() and e.suffix == ".run" for e in d.iterdir()),
        remedy="choose a new --out directory (it may only hold earlier *.run files)",
    )
    if args.candidates:
        from ..eval.datasets import load_candidates

        reports = evaluate_candidates(
            load_candidates(args.candidates), make_reranker(args), metrics, progress=not args.quiet
        )
    else:
        if not (args.index and args.queries and args.qrels):
            raise TansakuError("give INDEX --queries Q --qrels QRELS, or --run, or --candidates")
        from tansaku.retrieve import FusionConfig

        from ..api import open_index
        from ..search import default_rerank_k

        flt = parse_filter_arg(args)
        queries, qrels = read_queries(args.queries), read_qrels(args.qrels)
        without_text = _absent(qrels, queries)
        _note_left_out(without_text, len(qrels), f"without a text in {args.queries}", args.complete)
        with open_index(
            args.index,
            reranker=make_reranker(args),
            mode=args.mode,
            retrieve_k=args.retrieve_k,
            rerank_k=default_rerank_k(args.retrieve_k, args.rerank_k),
            fusion=FusionConfig(method=args.fusion),
            rerank_fusion_weight=args.rerank_fusion,
        ) as searcher:
            reports = evaluate_pipeline(
                searcher.pipeline(),
                queries,
                qrels,
                metrics,
                progress=not args.quiet,
                filter=flt,
                complete=args.complete,
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for report in reports:
        path = out_dir / f"{report.stage.replace('+', '-')}.run"
        write_run(path, report.results, tag=report.stage)
        files[report.stage] = str(path)
    if args.json:
        out = {"stages": [r.to_dict() | {"run_file": files[r.stage]} for r in reports]}
        if not args.candidates:
            out |= {"judged_queries": len(qrels), "judged_without_text": without_text}
        emit_json(out)
    else:
        print(format_table(reports, metrics))
        print("run files: " + ", ".join(files.values()), file=sys.stderr)
    return 0


def _absent(qrels: dict[str, Any], present: Any) -> int:
    """How many judged queries are not in ``present`` (queries with a text, or a run's)."""
    return sum(q not in present for q in qrels)


def _note_left_out(left_out: int, judged: int, why: str, complete: bool) -> None:
    """Say on stderr how many judged queries the means leave out (or count as 0 with -c)."""
    if not left_out:
        return
    from .options import say

    if complete:
        say(f"{left_out:,} of {judged:,} judged queries are {why}: counted as 0 (--complete)")
    else:
        say(
            f"{left_out:,} of {judged:,} judged queries are {why}: left out, the means are over the "
            f"{judged - left_out:,} evaluated (-c/--complete counts them as 0)"
        )
