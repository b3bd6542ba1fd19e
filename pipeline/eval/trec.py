"""TREC formats: qrels (``qid 0 docid rel``), runs (``qid Q0 docid rank score tag``), queries.

Plain or gzipped files; every parse error names the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from tansaku.index.errors import IngestError
from tansaku.index.hit import Hit

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def _open(path: str | os.PathLike[str], mode: str = "r") -> IO[str]:
    path = Path(path)
    if path.suffix == ".gz":
        # GzipFile itself: gzip.open's annotated return is a union TextIOWrapper does not take
        return io.TextIOWrapper(gzip.GzipFile(path, mode + "b"), encoding="utf-8")
    return open(path, mode, encoding="utf-8")  # noqa: SIM115


def _rows(path: str | os.PathLike[str], width: int, what: str):
    if not Path(path).is_file():
        raise IngestError(f"no such {what} file", source=str(path))
    with _open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != width:
                raise IngestError(
                    f"a {what} line has {width} columns, found {len(parts)}", source=str(path), line=line_no
                )
            yield line_no, parts


def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """``qid iter docid relevance`` lines (relevance an integer; 0 = judged non-relevant)."""
    qrels: Qrels = {}
    for line_no, (qid, _iter, doc, rel) in _rows(path, 4, "qrels"):
        try:
            qrels.setdefault(qid, {})[doc] = int(rel)
        except ValueError:
            raise IngestError(
                f"relevance must be an integer, got {rel!r}", source=str(path), line=line_no
            ) from None
    return qrels


def write_qrels(path: str | os.PathLike[str], qrels: Mapping[str, Mapping[str, int]]) -> None:
    with _open(path, "w") as fh:
        for qid, docs in qrels.items():
            for doc, rel in docs.items():
                fh.write(f"{qid} 0 {doc} {int(rel)}\n")


def read_run(path: str | os.PathLike[str]) -> Run:
    """``qid Q0 docid rank score tag`` lines; the score orders documents."""
    run: Run = {}
    for line_no, (qid, _q0, doc, _rank, score, _tag) in _rows(path, 6, "run"):
        try:
            run.setdefault(qid, {})[doc] = float(score)
        except ValueError:
            raise IngestError(
                f"score must be a number, got {score!r}", source=str(path), line=line_no
            ) from None
    return run


def write_run(
    path: str | os.PathLike[str], results: Mapping[str, Sequence[Hit]], tag: str = "tansaku"
) -> None:
    """One line per hit, ranks 1..n in the hits' order (document ids must not contain spaces)."""
    with _open(path, "w") as fh:
        for qid, hits in results.items():
            for rank, hit in enumerate(hits, 1):
                if any(c.isspace() for c in hit.doc_id):
                    raise IngestError(
                        f"document id {hit.doc_id!r} contains whitespace; TREC run files cannot hold it",
                        source=str(path),
                    )
                fh.write(f"{qid} Q0 {hit.doc_id} {rank} {hit.score:.6f} {tag}\n")


def read_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Queries from JSONL (``id``/``qid``/``_id`` + ``text``/``query``) or TSV (``qid<TAB>text``)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError("no such queries file", source=str(path))
    name = path.name.lower().removesuffix(".gz")
    queries: dict[str, str] = {}
    with _open(path) as fh:
        if name.endswith((".jsonl", ".ndjson", ".json")):
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise IngestError(f"invalid JSON: {exc.msg}", source=str(path), line=line_no) from None
                qid = next((obj[k] for k in ("id", "qid", "_id", "query_id") if k in obj), None)
                text = next((obj[k] for k in ("text", "query", "question") if k in obj), None)
                if qid is None or not isinstance(text, str) or not text.strip():
                    raise IngestError(
                        "a query needs an id (id/qid/_id) and a text (text/query)",
                        source=str(path),
                        line=line_no,
                    )
                queries[str(qid)] = text
        else:
            for row_no, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
                if not row:
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise IngestError("expected 'qid<TAB>query text'", source=str(path), line=row_no)
                queries[row[0]] = row[1]
    return queries


def write_queries(path: str | os.PathLike[str], queries: Mapping[str, str]) -> None:
    with _open(path, "w") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"id": qid, "text": text}, ensure_ascii=False) + "\n")
