"""Shared test set-up: offline hub, shared data paths, tiny models built once per session."""

from __future__ import annotations

import os
import tempfile

# The hub is unreachable on these machines; fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# numba's cache=True writes beside the kernels (into the source tree of an editable install);
# the suite keeps its compiled kernels in the temporary directory instead (set before numba loads).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tansaku-numba-cache"))

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fixtures_models import *  # noqa: E402,F401,F403  (session-scoped tiny-model fixtures)
from loopback import LoopbackServers  # noqa: E402
from ray_cluster import ray_cluster  # noqa: E402,F401  (one local Ray cluster per session)

REPO = Path(__file__).resolve().parent.parent
JSQUAD = REPO.parent / "shared" / "data" / "jsquad" / "valid-v1.3.json"


@pytest.fixture(scope="session")
def jsquad_path() -> Path:
    """The shared JSQuAD valid file; tests needing it skip with a reason when it is absent."""
    if not JSQUAD.exists():
        pytest.skip(f"JSQuAD benchmark file not found at {JSQUAD} (../shared is not beside the repo)")
    return JSQUAD


@pytest.fixture(scope="module")
def servers() -> Iterator[LoopbackServers]:
    """Loopback servers started by a test module; all are shut down at the module's end."""
    running = LoopbackServers()
    yield running
    running.close()


@pytest.fixture(scope="module")
def reranker(tiny_bert_reranker_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny BERT reranker with a 128-token window (long test documents get several)."""
    from tansaku.rerank import CrossEncoderReranker

    return CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128)


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, reranker):  # type: ignore[no-untyped-def]
    """The sample corpus's index opened with the tiny reranker (retrieve 30, rerank 20, top 5),
    as the HTTP server tests serve it."""
    import tansaku
    from tansaku.index import SAMPLE_CORPUS, build_index, read_file

    path = tmp_path_factory.mktemp("sample-searcher") / "idx"
    build_index(path, read_file(SAMPLE_CORPUS), progress=False).close()
    with tansaku.open(path, reranker=reranker, retrieve_k=30, rerank_k=20, top_n=5) as opened:
        yield opened
