"""Session-scoped fixtures that build tiny models on disk (owned by the rerank work).

The hub is unreachable where the tests run, so every model here is created from scratch:
vocabularies are written (or tokenizers trained) from the inline corpus below, weights are
randomly initialised under a fixed seed, and everything is saved with ``save_pretrained`` /
``SentenceTransformer.save`` so the code under test loads it exactly as it would load a
downloaded model directory. All models share one tiny shape (hidden 32, 2 layers, 2 heads).
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "tiny_bert_reranker_dir",
    "tiny_bert_japanese_reranker_dir",
    "tiny_xlmr_reranker_dir",
    "tiny_modernbert_reranker_dir",
    "tiny_bi_encoder_dir",
]

SEED = 1234
TINY_SHAPE: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
# With the usual 0.02 a random 2-layer model gives nearly the same logit for every pair;
# a wide init keeps scores visibly different so ordering and parity tests mean something.
INIT_RANGE = 0.3
MAX_POSITIONS = 512

JA_PARAGRAPHS: tuple[str, ...] = (
    "東京は日本の首都であり、世界でも有数の大都市です。人口はおよそ千四百万人です。",
    "京都には古い寺や神社が多く、毎年たくさんの観光客が訪れます。",
    "富士山は日本で一番高い山で、高さは三千七百七十六メートルです。",
    "検索エンジンは利用者の質問に合う文書を探し、関連度の高い順に並べて表示します。",
    "全文検索では、文章を単語に分けてから索引を作り、素早く文書を見つけます。",
    "リランカーは候補の文書を一つずつ読み直し、質問との関係を細かく評価します。",
    "新幹線は東京と大阪を約二時間半で結ぶ高速鉄道です。",
    "猫は昔から人間の近くで暮らしてきた動物で、ネズミを捕まえるのが得意です。",
    "日本の料理では、米と魚と野菜を使った食事がよく食べられています。",
    "北海道の冬はとても寒く、雪がたくさん降ります。スキーが人気です。",
    "機械学習のモデルは、大量のデータから規則を学び、新しい入力に答えを出します。",
    "図書館では本を借りることができ、静かな部屋で勉強する学生も多くいます。",
    "コンピューターのプログラムは、決められた手順に従って情報を処理します。",
    "夏の夜には花火大会が開かれ、浴衣を着た人々が川の近くに集まります。",
)
EN_SENTENCES: tuple[str, ...] = (
    "Tokyo is the capital of Japan and one of the largest cities in the world.",
    "A search engine finds documents that match a query and ranks them by relevance.",
    "The reranker reads every candidate document again and scores it against the question.",
    "Mount Fuji is the highest mountain in Japan.",
    "Cats have lived near people for thousands of years.",
    "The train from Tokyo to Osaka takes about two and a half hours.",
    "Machine learning models learn patterns from data and answer new questions.",
    "Students study quietly in the library after school.",
)
# Grade 1-2 school kanji plus a few that search text needs; every one becomes a vocab entry.
COMMON_KANJI = (
    "一右雨円王音下火花貝学気九休玉金空月犬見五口校左三山子四糸字耳七車手十出女小上森人水正生"
    "青夕石赤千川先早草足村大男竹中虫町天田土二日入年白八百文木本名目立力林六引羽雲園遠何科夏"
    "家歌画回会海絵外角楽活間丸岩顔汽記帰弓牛魚京強教近兄形計元言原戸古午後語工公広交光考行高"
    "黄合谷国黒今才細作算止市矢姉思紙寺自時室社弱首秋週春書少場色食心新親図数西声星晴切雪船線"
    "前組走多太体台地池知茶昼長鳥朝直通弟店点電刀冬当東答頭同道読内南肉馬売買麦半番父風分聞米"
    "歩母方北毎妹万明鳴毛門夜野友用曜来里理話検索情報質問回答都県府駅院猫料鉄技術研究発表順位"
    "評価関係文章単語候補東京大阪神社観光客訪利用者合度表示全索引作素早動物暮捕得意"
)
EN_WORDS: tuple[str, ...] = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "a",
    "for",
    "on",
    "that",
    "it",
    "by",
    "from",
    "with",
    "search",
    "engine",
    "document",
    "documents",
    "query",
    "rank",
    "ranks",
    "relevance",
    "score",
    "tokyo",
    "japan",
    "osaka",
    "kyoto",
    "capital",
    "city",
    "cities",
    "mountain",
    "fuji",
    "cat",
    "cats",
    "train",
    "library",
    "student",
    "students",
    "machine",
    "learning",
    "model",
    "models",
    "question",
    "answer",
    "data",
    "world",
    "people",
    "reranker",
    "candidate",
    "highest",
)
EN_SUFFIXES: tuple[str, ...] = ("##s", "##es", "##ed", "##ing", "##er", "##ly")
BERT_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
XLMR_SPECIALS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def training_corpus() -> list[str]:
    """Japanese paragraphs and English sentences the tokenizers are built from."""
    return [*JA_PARAGRAPHS, *EN_SENTENCES]


def base_characters() -> list[str]:
    """Every single character a tiny vocabulary must cover, in a stable order."""
    hiragana = [chr(c) for c in range(0x3041, 0x3097)]
    katakana = [chr(c) for c in range(0x30A1, 0x30FB)]
    corpus_cjk = [ch for text in JA_PARAGRAPHS for ch in text if _is_cjk(ch)]
    chars = [
        *string.ascii_letters,
        *string.digits,
        *string.punctuation,
        *hiragana,
        *katakana,
        "ー",
        "、",
        "。",
        *corpus_cjk,
        *(ch for ch in COMMON_KANJI if _is_cjk(ch)),
    ]
    return list(dict.fromkeys(chars))


def _is_cjk(ch: str) -> bool:
    return 0x4E00 <= ord(ch) <= 0x9FFF


def wordpiece_vocab(*, continuation: bool = True, words: bool = True) -> list[str]:
    """A WordPiece vocabulary: specials, characters, optional ``##`` pieces and English words.

    ``continuation`` adds ``##c`` for every character so any word made of known characters
    (including kana runs, which BERT does not split per character) avoids ``[UNK]``.
    """
    chars = base_characters()
    vocab = [*BERT_SPECIALS, *chars]
    if continuation:
        vocab += [f"##{ch}" for ch in chars] + list(EN_SUFFIXES)
    if words:
        vocab += list(EN_WORDS)
    return list(dict.fromkeys(vocab))


def write_vocab(directory: Path, vocab: Sequence[str]) -> Path:
    """Write ``vocab.txt`` (one token per line, id = line number) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def bert_tokenizer(directory: Path) -> Any:
    """A fast WordPiece BERT tokenizer over :func:`wordpiece_vocab`."""
    from transformers import BertTokenizerFast

    vocab_file = write_vocab(directory, wordpiece_vocab())
    # strip_accents=False: lower-casing would otherwise NFD-strip dakuten (で -> て).
    return BertTokenizerFast(
        vocab=str(vocab_file),
        do_lower_case=True,
        strip_accents=False,
        model_max_length=MAX_POSITIONS,
    )


def train_unigram_tokenizer() -> Any:
    """An XLM-R style tokenizer: Unigram + Metaspace, ``<s> A </s></s> B </s>`` pairs."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=2000,
        special_tokens=list(XLMR_SPECIALS),
        unk_token="<unk>",
        initial_alphabet=base_characters(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")),
        ("<s>", tokenizer.token_to_id("<s>")),
    )
    return tokenizer


def train_bpe_tokenizer() -> Any:
    """A ModernBERT style tokenizer: byte-level BPE with ``[CLS] A [SEP] B [SEP]`` pairs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=1200,
        special_tokens=list(BERT_SPECIALS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(training_corpus(), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


@contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Seed torch for a deterministic init without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def save_model(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Save model + tokenizer side by side, like a downloaded hub snapshot."""
    directory.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def bert_classifier(vocab_size: int, num_labels: int = 1) -> Any:
    """A seeded tiny BertForSequenceClassification."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=num_labels,
        initializer_range=INIT_RANGE,
        **TINY_SHAPE,
    )
    with seeded():
        return BertForSequenceClassification(config)


@pytest.fixture(scope="session")
def tiny_bert_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForSequenceClassification (1 logit) with a fast WordPiece tokenizer."""
    directory = tmp_path_factory.mktemp("tiny-bert-reranker")
    tokenizer = bert_tokenizer(directory)
    return save_model(bert_classifier(len(tokenizer)), tokenizer, directory)


@pytest.fixture(scope="session")
def tiny_bert_japanese_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like cl-tohoku / hotchpotch Japanese BERTs: MeCab (unidic-lite) words, character pieces."""
    from transformers import BertJapaneseTokenizer

    directory = tmp_path_factory.mktemp("tiny-bert-japanese-reranker")
    vocab_file = write_vocab(directory, wordpiece_vocab(continuation=False, words=False))
    tokenizer = BertJapaneseTokenizer(
        str(vocab_file),
        do_lower_case=False,
        word_tokenizer_type="mecab",
        mecab_kwargs={"mecab_dic": "unidic_lite"},
        subword_tokenizer_type="character",
        model_max_length=MAX_POSITIONS,
    )
    return save_model(bert_classifier(len(tokenizer)), tokenizer, directory)


@pytest.fixture(scope="session")
def tiny_xlmr_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XLMRobertaForSequenceClassification, the architecture of BAAI/bge-reranker-v2-m3."""
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizerFast,
    )

    directory = tmp_path_factory.mktemp("tiny-xlmr-reranker")
    backend = train_unigram_tokenizer()
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=backend, model_max_length=MAX_POSITIONS)
    pad_id = backend.token_to_id("<pad>")
    config = XLMRobertaConfig(
        vocab_size=backend.get_vocab_size(),
        type_vocab_size=1,
        num_labels=1,
        pad_token_id=pad_id,
        bos_token_id=backend.token_to_id("<s>"),
        eos_token_id=backend.token_to_id("</s>"),
        # positions start at padding_idx + 1, so the table needs that many extra rows
        max_position_embeddings=MAX_POSITIONS + pad_id + 1,
        initializer_range=INIT_RANGE,
        **TINY_SHAPE,
    )
    with seeded():
        model = XLMRobertaForSequenceClassification(config)
    return save_model(model, tokenizer, directory)


@pytest.fixture(scope="session")
def tiny_modernbert_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ModernBertForSequenceClassification (tomaarsen/reranker-ModernBERT-*) with byte BPE."""
    from transformers import (
        ModernBertConfig,
        ModernBertForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    directory = tmp_path_factory.mktemp("tiny-modernbert-reranker")
    backend = train_bpe_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        model_max_length=MAX_POSITIONS,
        model_input_names=["input_ids", "attention_mask"],  # ModernBERT has no token types
    )
    ids = {
        name: backend.token_to_id(tok)
        for name, tok in {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]"}.items()
    }
    config = ModernBertConfig(
        vocab_size=backend.get_vocab_size(),
        max_position_embeddings=MAX_POSITIONS,
        num_labels=1,
        pad_token_id=ids["pad"],
        cls_token_id=ids["cls"],
        sep_token_id=ids["sep"],
        bos_token_id=ids["cls"],
        eos_token_id=ids["sep"],
        initializer_range=INIT_RANGE,
        # flash-attn is neither installed nor usable on CPU; pin an implementation that is
        attn_implementation="sdpa",
        **TINY_SHAPE,
    )
    with seeded():
        model = ModernBertForSequenceClassification(config)
    save_model(model, tokenizer, directory)
    _pin_saved_attention(directory / "config.json", "sdpa")
    return directory


def _pin_saved_attention(config_file: Path, implementation: str) -> None:
    # save_pretrained drops the attention choice; write it back so a plain load keeps it
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["attn_implementation"] = implementation
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers bi-encoder (tiny BERT, mean pooling, normalized, dim 32)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    backbone_dir = tmp_path_factory.mktemp("tiny-bert-backbone")
    tokenizer = bert_tokenizer(backbone_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_RANGE,
        **TINY_SHAPE,
    )
    with seeded():
        backbone = BertModel(config)
    save_model(backbone, tokenizer, backbone_dir)

    transformer = Transformer(str(backbone_dir), max_seq_length=128)
    pooling = Pooling(TINY_SHAPE["hidden_size"], pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    directory = tmp_path_factory.mktemp("tiny-bi-encoder")
    model.save(str(directory))
    return directory
