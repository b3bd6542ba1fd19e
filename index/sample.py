"""The small sample corpus shipped with tansaku (50 Japanese + 6 English documents)."""

from pathlib import Path

SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "sample.jsonl"
