"""train-reranker: hard-negative mining on a real index, training, checkpoints, fusion, the CLI.

Bases are the tiny fixtures (a BertModel sentence-transformers directory shaped like the
e5-small import, and a tiny cross-encoder); every model is trained for real, for a few steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tansaku
from fixtures_models import JA_PARAGRAPHS
from helpers import write_jsonl
from tansaku.index import (
    BuildConfig,
    ConfigError,
    Hit,
    Index,
    IngestError,
    ModelLoadError,
    build_index,
    read_dicts,
)
from tansaku.pipeline.eval.fusion_tuning import (
    MIN_HELD_OUT_QUERIES,
    best_weight,
    decide_weight,
    sign_test_p,
)
from tansaku.pipeline.rerank_fusion import fuse
from tansaku.pipeline.train import (
    MiningConfig,
    TrainingPair,
    choose_fusion_weight,
    held_out_warning,
    mine_hard_negatives,
    read_pairs,
    split_holdout,
)
from tansaku.rerank import CrossEncoderReranker
from tansaku.rerank.training import (
    MANIFEST_FILE,
    PairEncoder,
    TrainConfig,
    TrainExample,
    initial_model,
    latest_checkpoint,
    loss_warning,
    train_cross_encoder,
)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
QUERIES = (
    "東京の人口は何人ですか",
    "京都の古い寺や神社",
    "富士山の高さは何メートル",
    "検索エンジンは文書を探す",
    "全文検索の索引を作る",
    "リランカーは候補の文書を評価する",
    "新幹線で東京と大阪を結ぶ",
    "猫はネズミを捕まえる",
    "日本の料理の食事",
    "北海道の冬の雪とスキー",
    "機械学習のモデルとデータ",
    "図書館で本を借りる",
    "コンピューターのプログラムの手順",
    "夏の夜の花火大会",
)
FAST = TrainConfig(epochs=4, learning_rate=5e-3, max_length=96, warmup_ratio=0.1, checkpoint_every=0)


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory) -> Path:
    """A BM25 index over the fixture paragraphs (doc i answers QUERIES[i])."""
    path = tmp_path_factory.mktemp("train-idx") / "idx"
    docs = [{"id": f"d{i:02d}", "title": "", "text": text} for i, text in enumerate(JA_PARAGRAPHS)]
    build_index(path, read_dicts(docs), BuildConfig(encoder="none"), progress=False).close()
    return path


@pytest.fixture(scope="module")
def pairs() -> list[TrainingPair]:
    return [TrainingPair(q, (f"d{i:02d}",), f"q{i}") for i, q in enumerate(QUERIES)]


@pytest.fixture(scope="module")
def examples(corpus_index, pairs) -> list[TrainExample]:
    index = Index.open(corpus_index)
    try:
        return mine_hard_negatives(index, pairs, MiningConfig(negatives=3, depth=10), progress=False)
    finally:
        index.close()


@pytest.fixture(scope="session")
def e5_like_base(tmp_path_factory, tiny_bi_encoder_dir) -> Path:
    """The tiny bi-encoder with an all-zero pooler: what `models import e5-small` writes."""
    path = tmp_path_factory.mktemp("e5-like") / "base"
    shutil.copytree(tiny_bi_encoder_dir, path)
    weights = load_file(str(path / "model.safetensors"))
    hidden = weights["embeddings.word_embeddings.weight"].shape[1]
    weights["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    weights["pooler.dense.bias"] = torch.zeros(hidden)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def margins(model, tokenizer, examples: list[TrainExample]) -> np.ndarray:
    """Per group: positive's logit minus the mean of its negatives' logits."""
    encoder = PairEncoder(tokenizer, model, FAST.max_length)
    model.eval()
    out = []
    with torch.no_grad():
        for ex in examples:
            logits = model(**encoder.batch([ex])).logits[:, 0]
            out.append(float(logits[0] - logits[1:].mean()))
    return np.array(out)


def trained_margins(out: Path, examples: list[TrainExample]) -> np.ndarray:
    reranker = CrossEncoderReranker(out, activation="none", max_length=FAST.max_length)
    out_m = []
    for ex in examples:
        s = reranker.score([(ex.query, t) for t in (ex.positive, *ex.negatives)])
        out_m.append(float(s[0] - s[1:].mean()))
    return np.array(out_m)


def weights_of(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


# -------------------------------------------------------------------------------- mining


def test_mining_takes_first_stage_hits_minus_positives(corpus_index, pairs, examples):
    index = Index.open(corpus_index)
    texts = {r.id: r.text for r in index.corpus.iter_records()}
    bm25_top = tansaku.open(corpus_index).search(QUERIES[2], mode="bm25", top_n=10).hits
    index.close()
    assert len(examples) == len(pairs) and all(len(e.negatives) == 3 for e in examples)
    for pair, ex in zip(pairs, examples, strict=True):
        assert ex.positive == texts[pair.positives[0]] and ex.positive not in ex.negatives
    # the hardest negatives are the best-ranked non-positive BM25 hits, in order
    expected = [texts[h.doc_id] for h in bm25_top if h.doc_id != "d02"][:3]
    if len(expected) == 3:
        assert list(examples[2].negatives) == expected


def test_unknown_positive_and_bad_pairs_file_fail_clearly(corpus_index, tmp_path):
    index = Index.open(corpus_index)
    with pytest.raises(IngestError, match="'nope'.*not in the index"):
        mine_hard_negatives(index, [TrainingPair("東京", ("nope",), "q")], progress=False)
    index.close()
    good = write_jsonl(
        tmp_path / "ok.jsonl",
        [{"query": "東京", "positive": "d00"}, {"query": "猫", "positive": ["d07", "d00"], "id": "x"}],
    )
    assert read_pairs(good) == [
        TrainingPair("東京", ("d00",), "ok.jsonl:1"),
        TrainingPair("猫", ("d07", "d00"), "x"),
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "東京", "positive": "d00"}, {"query": "猫"}])
    with pytest.raises(IngestError, match=r"bad.jsonl, line 2, field 'positive'"):
        read_pairs(bad)


def test_holdout_split_is_seeded_and_disjoint(pairs):
    train, held = split_holdout(pairs, 0.3, seed=1)
    assert len(held) == 4 and len(train) == len(pairs) - 4
    assert {p.qid for p in train}.isdisjoint({p.qid for p in held})
    assert split_holdout(pairs, 0.3, seed=1) == (train, held)
    assert split_holdout(pairs, 0.3, seed=2)[1] != held


# -------------------------------------------------------------------------------- training


def test_training_raises_positive_minus_negative_margin(e5_like_base, examples, tmp_path):
    start, _ = initial_model(e5_like_base, examples, FAST)
    assert any("untrained pooler set to standardise" in n for n in start.notes)
    before = margins(start.model, start.tokenizer, examples)
    result = train_cross_encoder(e5_like_base, examples, tmp_path / "out", FAST, progress=False)
    after = trained_margins(tmp_path / "out", examples)
    assert result.completed and result.steps == FAST.epochs * len(examples)
    assert result.warnings == ()  # the loss fell
    assert after.mean() > before.mean() + 0.3, (before.mean(), after.mean())
    assert (after > before).mean() >= 0.7
    # word embeddings were frozen (the default): unchanged from the base
    base_emb = load_file(str(e5_like_base / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert torch.equal(weights_of(tmp_path / "out")["bert.embeddings.word_embeddings.weight"], base_emb)


def test_bce_loss_and_unfrozen_embeddings(tiny_bert_reranker_dir, examples, tmp_path):
    config = TrainConfig(
        loss="bce", epochs=4, learning_rate=5e-3, max_length=96, train_embeddings=True, checkpoint_every=0
    )
    before = CrossEncoderReranker(tiny_bert_reranker_dir, activation="none", max_length=96)
    base_margin = np.mean(
        [
            float(s[0] - s[1:].mean())
            for s in (before.score([(ex.query, t) for t in (ex.positive, *ex.negatives)]) for ex in examples)
        ]
    )
    train_cross_encoder(tiny_bert_reranker_dir, examples, tmp_path / "bce", config, progress=False)
    assert trained_margins(tmp_path / "bce", examples).mean() > base_margin + 0.3
    base_emb = load_file(str(tiny_bert_reranker_dir / "model.safetensors"))[
        "bert.embeddings.word_embeddings.weight"
    ]
    assert not torch.equal(weights_of(tmp_path / "bce")["bert.embeddings.word_embeddings.weight"], base_emb)


def test_same_seed_same_model_other_seed_other_model(e5_like_base, examples, tmp_path):
    config = TrainConfig(epochs=1, learning_rate=1e-3, max_length=96, checkpoint_every=0)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_cross_encoder(
            e5_like_base,
            examples,
            tmp_path / name,
            TrainConfig(**{**config.to_dict(), "seed": seed}),
            progress=False,
        )
    a, b, c = (weights_of(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_from_checkpoint_equals_uninterrupted_run(e5_like_base, examples, tmp_path):
    config = TrainConfig(epochs=2, learning_rate=1e-3, max_length=96, checkpoint_every=5)
    full = train_cross_encoder(e5_like_base, examples, tmp_path / "full", config, progress=False)
    paused = train_cross_encoder(
        e5_like_base, examples, tmp_path / "part", config, stop_after=7, progress=False
    )
    assert not paused.completed and paused.steps == 7
    checkpoint = latest_checkpoint(tmp_path / "part")
    assert checkpoint == paused.checkpoint and checkpoint.name == "step-0000007"
    # plain tensors and JSON only: nothing a loader would unpickle
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "optimizer.safetensors",
        "state.json",
        "trainable.safetensors",
    ]
    assert not (tmp_path / "part" / "config.json").exists()
    # settings that change the arithmetic must match
    with pytest.raises(ConfigError, match="learning_rate was 0.001 in the paused run"):
        train_cross_encoder(
            e5_like_base,
            None,
            tmp_path / "part",
            TrainConfig(**{**config.to_dict(), "learning_rate": 2e-3}),
            resume=True,
            progress=False,
        )
    resumed = train_cross_encoder(e5_like_base, None, tmp_path / "part", config, resume=True, progress=False)
    assert resumed.completed and resumed.steps == full.steps
    a, b = weights_of(tmp_path / "full"), weights_of(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "part" / "checkpoints").exists()  # removed once done


def test_micro_batches_layers_and_frozen_layers(e5_like_base, examples, tmp_path):
    loaded, _ = initial_model(e5_like_base, examples, FAST)
    loaded.model.eval()
    encoder = PairEncoder(loaded.tokenizer, loaded.model, FAST.max_length)
    with torch.no_grad():
        padded = loaded.model(**encoder.batch(examples[:2])).logits[:, 0]
        for size in (1, 3, 8):  # length-sorted micro-batches, put back in input order
            torch.testing.assert_close(
                encoder.logits(loaded.model, examples[:2], size), padded, atol=1e-5, rtol=1e-5
            )
    config = TrainConfig(
        epochs=1, learning_rate=1e-3, max_length=96, layers=1, freeze_layers=1, checkpoint_every=0
    )
    train_cross_encoder(e5_like_base, examples[:3], tmp_path / "one", config, progress=False)
    saved = json.loads((tmp_path / "one" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1
    trained, base = weights_of(tmp_path / "one"), load_file(str(e5_like_base / "model.safetensors"))
    assert not any(k.startswith("bert.encoder.layer.1.") for k in trained)
    # layer 0 was frozen, the head was not
    assert torch.equal(
        trained["bert.encoder.layer.0.output.dense.weight"], base["encoder.layer.0.output.dense.weight"]
    )
    assert len(CrossEncoderReranker(tmp_path / "one").score([("東京", "東京は日本の首都")])) == 1
    with pytest.raises(ConfigError, match="layers=5: the base model has 2 layers"):
        train_cross_encoder(
            e5_like_base,
            examples[:3],
            tmp_path / "five",
            TrainConfig(layers=5, checkpoint_every=0),
            progress=False,
        )


def test_output_dir_rules(e5_like_base, examples, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        train_cross_encoder(e5_like_base, None, out, FAST, resume=True, progress=False)
    (out / "x").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not empty"):
        train_cross_encoder(e5_like_base, examples, out, FAST, progress=False)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        train_cross_encoder(e5_like_base, examples, out, FAST, overwrite=True, progress=False)
    with pytest.raises(ModelLoadError, match="does not exist"):
        train_cross_encoder(tmp_path / "no-model", examples, tmp_path / "o2", FAST, progress=False)
    with pytest.raises(ConfigError, match="loss must be one of"):
        TrainConfig(loss="hinge")
    with pytest.raises(ConfigError, match="no negatives"):
        train_cross_encoder(e5_like_base, [TrainExample("q", "p", ())], tmp_path / "o3", FAST, progress=False)


def test_trained_dir_loads_as_a_normal_cross_encoder(e5_like_base, examples, tmp_path):
    out = tmp_path / "ce"
    train_cross_encoder(e5_like_base, examples[:4], out, FAST, provenance={"note": "test"}, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 1  # num_labels=1, as transformers 5 writes it
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["base"] == str(e5_like_base) and manifest["seed"] == 0
    assert manifest["params"]["loss"] == "listwise" and manifest["data"] == {"note": "test"}
    assert manifest["examples"] == 4 and manifest["train_seconds"] >= 0
    from sentence_transformers import CrossEncoder

    pairs = [(ex.query, ex.positive) for ex in examples[:4]]
    predicted = CrossEncoder(str(out)).predict(pairs)
    ours = CrossEncoderReranker(out).score(pairs)
    np.testing.assert_allclose(ours, predicted, atol=1e-5)


# -------------------------------------------------------------------------------- fusion


def test_fuse_interpolates_between_first_stage_and_reranker():
    first = [Hit("a", 10.0, 1, "bm25"), Hit("b", 9.0, 2, "bm25"), Hit("c", 1.0, 3, "bm25")]
    reranked = [Hit("c", 0.9, 1, "rerank"), Hit("b", 0.5, 2, "rerank"), Hit("a", 0.1, 3, "rerank")]
    assert [h.doc_id for h in fuse(first, reranked, 1.0)] == ["c", "b", "a"]
    assert [h.doc_id for h in fuse(first, reranked, 0.0)] == ["a", "b", "c"]
    mid = fuse(first, reranked, 0.5)
    # b: 0.5 * 0.5 + 0.5 * (8/9) beats a (0.5) and c (0.5)
    assert mid[0].doc_id == "b" and mid[0].score == pytest.approx(0.25 + 0.5 * 8 / 9)
    assert [h.rank for h in mid] == [1, 2, 3] and fuse(first, reranked, 0.5, top_n=1) == mid[:1]
    with pytest.raises(ConfigError, match="must be a number in"):
        fuse(first, reranked, 1.5)
    assert best_weight({0.0: 0.5, 0.5: 0.7, 1.0: 0.7}) == 1.0


@pytest.mark.slow
def test_pipeline_fusion_weight_and_the_trained_default(corpus_index, e5_like_base, examples, tmp_path):
    out = tmp_path / "r"
    train_cross_encoder(e5_like_base, examples, out, FAST, progress=False)
    with tansaku.open(corpus_index, reranker=str(out), retrieve_k=10, rerank_k=5, top_n=5) as idx:
        first = idx.search(QUERIES[4], reranker=None).hits
        pure = idx.search(QUERIES[4]).hits  # no fusion weight recorded: pure reranker order
        reranker = CrossEncoderReranker(out)
        texts = [h.text for h in first]
        scores = reranker.score([(QUERIES[4], t) for t in texts])
        assert [h.doc_id for h in pure] == [first[i].doc_id for i in np.argsort(-scores, kind="stable")]
        zero = idx.search(QUERIES[4], rerank_fusion_weight=0.0).hits
        assert [h.doc_id for h in zero] == [h.doc_id for h in first]
        assert zero[0].stage == "rerank" and zero[0].score == pytest.approx(1.0)
        with pytest.raises(ConfigError, match="rerank_fusion_weight"):
            idx.search(QUERIES[4], rerank_fusion_weight=2)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["fusion"] = {"weight": 0.0}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with tansaku.open(corpus_index, reranker=str(out), retrieve_k=10, rerank_k=5, top_n=5) as idx:
        assert [h.doc_id for h in idx.search(QUERIES[4]).hits] == [h.doc_id for h in first]
        assert idx.search(QUERIES[4], rerank_fusion_weight=1.0).hits == pure
    # the recorded first stage is the default mode where the index can serve it
    manifest["fusion"] = {"weight": 0.5, "first_stage": "hybrid"}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with tansaku.open(corpus_index, reranker=str(out), retrieve_k=10, rerank_k=5) as idx:
        assert idx.pipeline().retriever.stage == "bm25"  # BM25-only index: hybrid cannot be served
    hybrid_index = tmp_path / "hybrid"
    docs = [{"id": f"d{i:02d}", "title": "", "text": text} for i, text in enumerate(JA_PARAGRAPHS)]
    build_index(hybrid_index, read_dicts(docs), BuildConfig(encoder="corpus"), progress=False).close()
    with tansaku.open(hybrid_index, reranker=str(out), retrieve_k=10, rerank_k=5) as idx:
        assert idx.pipeline().retriever.stage == "hybrid"
        manifest["fusion"]["first_stage"] = "bm25"
        (out / MANIFEST_FILE).write_text(json.dumps(manifest))
        assert idx.pipeline().retriever.stage == "bm25"
        assert idx.pipeline(mode="dense").retriever.stage == "dense"  # an explicit mode wins
        assert idx.pipeline(reranker=None).retriever.stage == "hybrid"
        assert idx.search(QUERIES[4]).hits[0].stage == "rerank"


# -------------------------------------------------------------------------------- guards


def test_progress_is_said_before_the_base_is_loaded_and_prepared(
    e5_like_base, examples, tmp_path, monkeypatch, capsys
):
    import tansaku.rerank.training.loop as loop

    events: list[str] = []
    real = loop.initial_model

    def spy(*args, **kwargs):
        events.append("initial_model")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "initial_model", spy)
    config = TrainConfig(max_steps=1, max_length=96, checkpoint_every=0)
    train_cross_encoder(e5_like_base, examples[:2], tmp_path / "o", config, progress=True, log=events.append)
    assert events.index("initial_model") == 1 and events[0] == f"loading base model {e5_like_base}"
    assert "loaded and prepared in" in events[2]
    assert "preparing model" in capsys.readouterr().err  # the pooler's pass over the pairs has a bar


def test_mining_bar_is_up_before_the_retriever_is_made(corpus_index, pairs, monkeypatch, capsys):
    import tansaku.pipeline.train as train_module

    seen: list[str] = []
    real = train_module.make_retriever

    def spy(*args, **kwargs):
        seen.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_retriever", spy)
    index = Index.open(corpus_index)
    try:
        mine_hard_negatives(index, pairs[:2], MiningConfig(negatives=2, depth=5), progress=True)
    finally:
        index.close()
    assert "mining negatives" in seen[0]


def test_a_loss_that_does_not_fall_is_a_warning(e5_like_base, examples, tmp_path):
    assert loss_warning([2.0] * 40 + [1.0] * 40) is None
    flat = loss_warning([2.08, 2.07, 2.09, 2.06] * 10)
    assert flat and flat.startswith("warning: the training loss did not fall") and "10 steps" in flat
    assert "too few to tell" in loss_warning([2.0, 1.0, 0.5])
    assert loss_warning([]) is None
    # a learning rate too small to move anything: the run says so, and so does its manifest
    config = TrainConfig(epochs=8, learning_rate=1e-12, max_length=96, warmup_ratio=0.0, checkpoint_every=0)
    result = train_cross_encoder(e5_like_base, examples[:1], tmp_path / "flat", config, progress=False)
    assert result.steps == 8 and len(result.warnings) == 1
    assert result.warnings[0].startswith("warning: the training loss did not fall")
    assert result.to_dict()["warnings"] == list(result.warnings)
    assert json.loads((tmp_path / "flat" / MANIFEST_FILE).read_text())["warnings"] == list(result.warnings)


def per_query(values: dict[float, list[float]]) -> dict[float, dict[str, float]]:
    return {w: {f"q{i}": v for i, v in enumerate(vs)} for w, vs in values.items()}


def test_fusion_default_needs_a_margin_the_held_out_size_resolves():
    assert sign_test_p(5, 0) == pytest.approx(1 / 32) and sign_test_p(0, 0) == 1.0
    assert sign_test_p(9, 1) == pytest.approx(11 / 1024)
    # the case: 3 held-out queries, all tied at every weight
    tied = decide_weight(per_query({w / 10: [1.0, 1.0, 1.0] for w in range(11)}))
    assert tied.weight == 0.0 and tied.best == 1.0 and not tied.beat_first_stage
    assert "only 3 held-out queries" in tied.reason and (tied.wins, tied.losses, tied.ties) == (0, 0, 3)
    flat = decide_weight(per_query({0.0: [0.5] * 25, 0.5: [0.5] * 24 + [0.4], 1.0: [0.4] * 25}))
    assert flat.weight == 0.0 and flat.best == 0.0 and "first stage alone" in flat.reason
    # better on all 3, but 3 queries cannot resolve anything
    few = decide_weight(per_query({0.0: [0.5, 0.5, 0.5], 0.5: [0.9, 0.9, 0.9], 1.0: [0.7, 0.7, 0.7]}))
    assert few.weight == 0.0 and few.best == 0.5 and f"fewer than the {MIN_HELD_OUT_QUERIES}" in few.reason
    # 30 queries: better on 20, worse on 2, tied on 8 -> recorded
    first = [0.5] * 30
    better = [0.8] * 20 + [0.4] * 2 + [0.5] * 8
    clear = decide_weight(per_query({0.0: first, 0.3: better, 1.0: first}))
    assert (
        clear.weight == 0.3
        and clear.beat_first_stage
        and (clear.wins, clear.losses, clear.ties) == (20, 2, 8)
    )
    # 30 queries: a higher mean, but 9 wins against 7 losses is noise at this size
    noisy = [0.9] * 9 + [0.4] * 7 + [0.5] * 14
    unsure = decide_weight(per_query({0.0: first, 0.3: noisy, 1.0: first}))
    assert (
        unsure.best == 0.3 and unsure.weight == 0.0 and "not a margin 30 queries can resolve" in unsure.reason
    )


def test_held_out_sweep_records_zero_when_too_few_queries(
    corpus_index, pairs, tiny_bert_reranker_dir, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_reranker_dir, model)
    index = Index.open(corpus_index)
    try:
        fusion = choose_fusion_weight(index, model, pairs[:3], mode="bm25", rerank_k=5, progress=False)
    finally:
        index.close()
    assert fusion["weight"] == 0.0 and fusion["beat_first_stage"] is False
    assert fusion["held_out_queries"] == 3 and "only 3 held-out queries" in fusion["reason"]
    assert set(fusion["test"]) == {"wins", "losses", "ties", "p_value", "rule"}
    assert json.loads((model / MANIFEST_FILE).read_text())["fusion"] == fusion
    with tansaku.open(corpus_index, reranker=str(model), retrieve_k=10, rerank_k=5) as idx:
        assert idx.pipeline().rerank_fusion_weight == 0.0  # searches keep the first stage's order
    assert "only 3 held-out queries" in held_out_warning(34, 3, 0.1)
    assert "no held-out queries" in held_out_warning(34, 0, 0.0)
    assert held_out_warning(400, MIN_HELD_OUT_QUERIES, 0.05) is None


# -------------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_train_reranker_end_to_end(corpus_index, e5_like_base, tmp_path):
    data = write_jsonl(
        tmp_path / "pairs.jsonl", [{"query": q, "positive": f"d{i:02d}"} for i, q in enumerate(QUERIES)]
    )
    out = tmp_path / "reranker"
    common = [
        "train-reranker",
        "--base",
        e5_like_base,
        "--train",
        data,
        "--index",
        corpus_index,
        "--out",
        out,
        "--negatives",
        "3",
        "--epochs",
        "2",
        "--lr",
        "2e-3",
        "--max-length",
        "96",
        "--holdout",
        "0.3",
        "--rerank-k",
        "5",
        "-q",
    ]
    proc = run_cli(*common, "--pause-after", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    paused = json.loads(proc.stdout)
    assert paused["completed"] is False and paused["steps"] == 5 and paused["fusion"] is None
    proc = run_cli(*common, "--json")  # a paused run is not silently replaced
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = run_cli(*common, "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    assert done["completed"] is True and done["steps"] == 2 * 10  # 14 pairs, 4 held out
    fusion = done["fusion"]
    assert fusion["held_out_queries"] == 4 and 0 <= fusion["weight"] <= 1
    # 4 held-out queries cannot resolve a fusion weight: 0 is recorded, and -q still says so
    assert fusion["weight"] == 0.0 and "only 4 held-out queries" in fusion["reason"]
    assert "warning: only 4 held-out queries (--holdout 0.3 of 14 pairs)" in proc.stderr
    assert "warning: fusion weight 0 recorded" in proc.stderr
    assert set(fusion["by_weight"]) == {f"{w / 10:g}" for w in range(11)}
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["fusion"] == fusion and manifest["data"]["mining"]["mode"] == "bm25"
    assert manifest["data"]["held_out_pairs"] == 4 and manifest["data"]["sources"] == [str(data)]

    proc = run_cli(
        "search",
        corpus_index,
        QUERIES[2],
        "--reranker",
        out,
        "--retrieve-k",
        "10",
        "--rerank-k",
        "5",
        "--top-n",
        "3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    hits = found["hits"]
    assert len(hits) == min(3, found["counts"]["retrieved"]) and hits[0]["stage"] == "rerank"
    proc = run_cli("search", corpus_index, QUERIES[2], "--reranker", out, "--rerank-fusion", "1.5")
    assert proc.returncode == 2 and "--rerank-fusion" in proc.stderr


def test_cli_train_reranker_errors(corpus_index, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "東京", "positive": "missing-id"}])
    proc = run_cli(
        "train-reranker",
        "--base",
        tmp_path / "no-base",
        "--train",
        data,
        "--index",
        corpus_index,
        "--out",
        tmp_path / "o",
        "--holdout",
        "0",
        "-q",
    )
    assert proc.returncode == 2 and "'missing-id'" in proc.stderr and "not in the index" in proc.stderr
    proc = run_cli("train-reranker", "--help")
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--rerank-k" in proc.stdout
