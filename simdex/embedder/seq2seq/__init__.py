"""Sequence-to-sequence translator (the lecture's French -> English GRU with attention) and its text pipeline.

Text side (pure Python + numpy): `text` (tokenizer, Vocab, padding), `bpe` (byte-pair encoding), `wordvec`
(GloVe / fastText / word2vec loaders), `corpora` (Giga-French question filter, bundled question set).
"""


def __getattr__(name):
    """`from simdex.embedder.seq2seq import load_model`, without importing torch when the registry lists embedders."""
    if name == "load_model":
        from simdex.embedder.seq2seq.checkpoint import load_model  # noqa: PLC0415

        return load_model
    raise AttributeError(name)
