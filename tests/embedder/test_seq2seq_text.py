"""Text pipeline of the seq2seq translator: tokenizer, Vocab, padding, BPE, word vectors, corpora."""
from __future__ import annotations

import gzip
import json
import logging
import random
import re
import struct
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simdex.embedder.seq2seq.bpe import EOW, BPE, _merge_pair, _pairs, _symbols
from simdex.embedder.seq2seq.corpora import bundled_questions, giga_french, paraphrase_groups
from simdex.embedder.seq2seq.text import Vocab, detokenize, pad_batch, tokenize
from simdex.embedder.seq2seq.wordvec import MISS_SCALE, load_vectors
from simdex.errors import InvalidArgument, NotFound

# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Rachel's baby is cuter than other's.", "rachel 's baby is cuter than other 's ."),
        ("Qu'est-ce que la lumière?", "qu' est ce que la lumière ?"),
        ("D'où viens-tu?", "d' où viens tu ?"),
        ("What's light?", "what 's light ?"),
        ("Qu’est-ce que c’est?", "qu’ est ce que c’ est ?"),  # curly apostrophe
        ("A well-known, self-made man!", "a well known , self made man !"),
        ('He said "hi" (twice); ok/no_way—yes: “fine”', 'he said " hi " ( twice ) ; ok / no _ way — yes : “ fine ”'),
        ("  Who   are we ?  ", "who are we ?"),
    ],
)
def test_tokenize_follows_the_lecture_rules(text, expected):
    assert tokenize(text) == expected.split()


def test_tokenize_rejects_non_strings():
    with pytest.raises(InvalidArgument, match="str"):
        tokenize(["not", "a", "string"])


def test_detokenize_glues_punctuation_and_clitics():
    assert detokenize(tokenize("Rachel's baby is cuter than other's.")) == "rachel's baby is cuter than other's."
    assert detokenize(tokenize("Qu'est-ce que la lumière (vraiment)?")) == "qu'est ce que la lumière (vraiment)?"


def test_detokenize_then_tokenize_gives_the_tokens_back_on_the_bundled_set():
    for src, tgt in bundled_questions():
        for s in (src, tgt):
            toks = tokenize(s)
            assert tokenize(detokenize(toks)) == toks


# ---------------------------------------------------------------- Vocab


def _expected_order(seqs, min_freq=1, max_size=None):
    """Oracle: frequency desc, ties alphabetical."""
    c = Counter(t for s in seqs for t in s)
    order = sorted((t for t in c if c[t] >= min_freq), key=lambda t: (-c[t], t))
    return order if max_size is None else order[:max_size]


SEQS = [tokenize(en) for _, en in bundled_questions()][:120]


def test_vocab_specials_come_first():
    v = Vocab(["a", "b"])
    assert (Vocab.PAD, Vocab.SOS, Vocab.EOS, Vocab.UNK) == (0, 1, 2, 3)
    assert v.tokens == ["<pad>", "<sos>", "<eos>", "<unk>", "a", "b"]
    assert len(v) == 6 and v.index("b") == 5


def test_vocab_build_orders_by_frequency_then_alphabet():
    v = Vocab.build(SEQS)
    assert v.tokens[4:] == _expected_order(SEQS)


def test_vocab_build_is_deterministic_under_input_order():
    shuffled = SEQS[:]
    random.Random(1).shuffle(shuffled)
    assert Vocab.build(shuffled) == Vocab.build(SEQS)


def test_vocab_build_min_freq_and_max_size():
    v = Vocab.build(SEQS, min_freq=3, max_size=10)
    assert v.tokens[4:] == _expected_order(SEQS, 3, 10)
    assert len(Vocab.build(SEQS, max_size=0)) == 4


@pytest.mark.parametrize("kwargs", [{"min_freq": 0}, {"max_size": -1}, {"min_freq": 1.5}])
def test_vocab_build_rejects_bad_limits(kwargs):
    with pytest.raises(InvalidArgument):
        Vocab.build(SEQS, **kwargs)


def test_vocab_rejects_duplicates():
    with pytest.raises(InvalidArgument, match="'a'"):
        Vocab(["a", "b", "a"])


def test_vocab_encode_decode_round_trip():
    v = Vocab.build(SEQS)
    toks = SEQS[7]
    ids = v.encode(toks, add_sos=True)
    assert ids[0] == Vocab.SOS and ids[-1] == Vocab.EOS and len(ids) == len(toks) + 2
    assert v.decode(ids) == toks
    assert v.encode(toks, add_eos=False) == [v.tokens.index(t) for t in toks]


def test_vocab_unknown_tokens_map_to_unk():
    v = Vocab(["a"])
    assert v.index("zzz") == Vocab.UNK
    assert v.encode(["a", "zzz"]) == [4, Vocab.UNK, Vocab.EOS]
    assert v.decode([4, Vocab.UNK]) == ["a", "<unk>"]


def test_vocab_decode_stops_at_eos_and_drops_pad_and_sos():
    v = Vocab(["a", "b"])
    ids = np.array([Vocab.SOS, 4, Vocab.PAD, 5, Vocab.EOS, 4, Vocab.PAD])
    assert v.decode(ids) == ["a", "b"]
    assert v.decode(ids, strip=False) == ["<sos>", "a", "<pad>", "b", "<eos>", "a", "<pad>"]
    with pytest.raises(InvalidArgument, match="99"):
        v.decode([99])


def test_vocab_to_dict_is_json_safe_and_round_trips():
    v = Vocab.build(SEQS)
    d = json.loads(json.dumps(v.to_dict()))
    assert Vocab.from_dict(d) == v
    assert Vocab(v.tokens) == v


def test_pad_batch_right_pads_with_lengths():
    seqs = [[5, 6, 7], [8], []]
    x, lengths = pad_batch(seqs, pad=9)
    assert x.dtype == np.int64 and lengths.dtype == np.int64 and x.shape == (3, 3)
    for row, s in zip(x, seqs):
        assert list(row[: len(s)]) == s and all(row[len(s):] == 9)
    assert lengths.tolist() == [3, 1, 0]


def test_pad_batch_truncates_at_max_len():
    x, lengths = pad_batch([[1, 2, 3, 4], [5]], max_len=2)
    assert x.tolist() == [[1, 2], [5, 0]] and lengths.tolist() == [2, 1]


# ---------------------------------------------------------------- BPE


def _naive_bpe(seqs, num_merges, keep_top=0, min_freq=2):
    """Oracle: recount every pair at every step, as in Sennrich et al.'s reference listing."""
    c = Counter(t for s in seqs for t in s)
    learned = sorted(c, key=lambda w: (-c[w], w))[keep_top:]
    words = {w: _symbols(w) for w in learned}
    merges = []
    for _ in range(num_merges):
        stats = Counter()
        for w, sy in words.items():
            for p, n in _pairs(sy).items():
                stats[p] += n * c[w]
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], p))
        if stats[best] < min_freq:
            break
        merges.append(best)
        words = {w: _merge_pair(sy, best) for w, sy in words.items()}
    return merges, words


@pytest.mark.parametrize("seed", range(8))
def test_bpe_matches_the_naive_algorithm(seed):
    rng = random.Random(seed)
    alphabet = "abcde"[: rng.randint(2, 5)]
    seqs = [["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 6))]
            for _ in range(rng.randint(5, 40))]
    num_merges, keep_top = rng.randint(1, 40), rng.randint(0, 3)
    bpe = BPE.learn(seqs, num_merges, keep_top=keep_top)
    merges, segmentation = _naive_bpe(seqs, num_merges, keep_top)
    assert bpe.merges == merges
    for word, units in segmentation.items():
        assert list(bpe.segment(word)) == units


TRAIN = [tokenize(s) for pair in bundled_questions()[::2] for s in pair]
HELD_OUT = [tokenize(s) for pair in bundled_questions()[1::2] for s in pair]
_BPE_SMALL = BPE.learn(TRAIN, num_merges=100, keep_top=5)


def test_bpe_round_trip_is_exact_including_unseen_words():
    bpe = BPE.learn(TRAIN, num_merges=300)
    seen = {t for s in TRAIN for t in s}
    unseen = [s for s in HELD_OUT if any(t not in seen for t in s)]
    assert unseen, "the held-out half should contain words the BPE never saw"
    for toks in TRAIN + HELD_OUT + [["xylophone", "ŋ", "ça", "日本"]]:
        assert bpe.decode(bpe.encode(toks)) == toks


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8).filter(lambda t: EOW not in t), min_size=1, max_size=12))
def test_bpe_round_trip_property(words):
    bpe = _BPE_SMALL
    assert bpe.decode(bpe.encode(words)) == words


def test_bpe_merges_never_cross_word_boundaries():
    # "a" ending one word and "b" starting the next is the most frequent adjacency in this corpus.
    seqs = [["xa", "by"], ["za", "bw"]] * 50
    bpe = BPE.learn(seqs, num_merges=50, min_freq=1)
    assert bpe.merges, "something must be learned"
    assert all(not left.endswith(EOW) for left, _ in bpe.merges)
    for unit in bpe.encode([t for s in seqs for t in s]):
        assert EOW not in unit[:-len(EOW)]


def test_bpe_units_mark_word_ends():
    bpe = BPE.learn(TRAIN, num_merges=200)
    for toks in HELD_OUT[:50]:
        units = bpe.encode(toks)
        assert sum(u.endswith(EOW) for u in units) == len(toks)


def test_bpe_keep_top_words_stay_whole_and_do_not_train_merges():
    counts = Counter(t for s in TRAIN for t in s)
    top = sorted(counts, key=lambda w: (-counts[w], w))[:20]
    bpe = BPE.learn(TRAIN, num_merges=150, keep_top=20)
    assert bpe.keep == frozenset(top)
    for w in top:
        assert bpe.encode([w]) == [w + EOW]
    without_top = [[t for t in s if t not in bpe.keep] for s in TRAIN]
    assert bpe.merges == BPE.learn(without_top, num_merges=150).merges


def test_bpe_merge_budget_is_respected():
    for n in (0, 1, 37):
        assert len(BPE.learn(TRAIN, num_merges=n).merges) == n
    assert BPE.learn(TRAIN, num_merges=0).encode(["abc"]) == ["a", "b", "c" + EOW]


def test_bpe_stops_when_pairs_get_rare():
    bpe = BPE.learn([["ab", "cd"]], num_merges=10, min_freq=2)
    assert bpe.merges == []


def test_bpe_to_dict_round_trip():
    bpe = BPE.learn(TRAIN, num_merges=80, keep_top=10)
    again = BPE.from_dict(json.loads(json.dumps(bpe.to_dict())))
    assert again == bpe
    assert again.encode(HELD_OUT[3]) == bpe.encode(HELD_OUT[3])


@pytest.mark.parametrize("bad", ["", "a</w>b"])
def test_bpe_rejects_bad_tokens(bad):
    with pytest.raises(InvalidArgument):
        _BPE_SMALL.encode(["ok", bad])


# ---------------------------------------------------------------- word vectors

VEC = {
    "quelle": [0.5, -1.0, 2.0],
    "population": [1.5, 0.25, -0.75],
    "Canada": [3.0, 2.0, 1.0],  # only found through the lowercase fallback
    "absent": [9.0, 9.0, 9.0],  # not in the vocabulary
}
VOCAB = Vocab(["quelle", "population", "canada", "du"])


def _text_lines():
    return [f"{w} {' '.join(str(x) for x in v)}\n" for w, v in VEC.items()]


def _write_glove(path):
    path.write_text("".join(_text_lines()), encoding="utf-8")


def _write_vec(path):  # fastText .vec and word2vec text: "n d" header first
    path.write_text(f"{len(VEC)} 3\n" + "".join(_text_lines()), encoding="utf-8")


def _write_bin(path, opener=open):
    with opener(path, "wb") as f:
        f.write(f"{len(VEC)} 3\n".encode())
        for w, v in VEC.items():
            f.write(w.encode() + b" " + struct.pack("<3f", *v) + b"\n")


@pytest.mark.parametrize(
    "name, write",
    [
        ("glove.6B.3d.txt", _write_glove),
        ("cc.fr.3.vec", _write_vec),
        ("w2v.txt", _write_vec),
        ("frwac.bin", _write_bin),
        ("frwac.bin.gz", lambda p: _write_bin(p, gzip.open)),
    ],
)
def test_load_vectors_each_format(tmp_path, caplog, name, write):
    path = tmp_path / name
    write(path)
    with caplog.at_level(logging.INFO, logger="simdex.embedder.seq2seq.wordvec"):
        emb, coverage = load_vectors(path, VOCAB, dim=3, seed=7)
    assert emb.shape == (len(VOCAB), 3) and emb.dtype == np.float32
    for word in ("quelle", "population"):
        np.testing.assert_allclose(emb[VOCAB.index(word)], VEC[word])
    np.testing.assert_allclose(emb[VOCAB.index("canada")], VEC["Canada"])
    assert coverage == pytest.approx(3 / 4)
    assert "coverage" in caplog.text
    # Misses (and SOS/EOS/UNK) keep the seeded normal(0.6) draw; PAD is zeros.
    draw = np.random.default_rng(7).normal(scale=MISS_SCALE, size=(len(VOCAB), 3)).astype(np.float32)
    for i in (Vocab.SOS, Vocab.EOS, Vocab.UNK, VOCAB.index("du")):
        np.testing.assert_array_equal(emb[i], draw[i])
    assert not emb[Vocab.PAD].any()


def test_load_vectors_accepts_the_token_list(tmp_path):
    path = tmp_path / "g.txt"
    _write_glove(path)
    emb, coverage = load_vectors(path, VOCAB.tokens, seed=3)
    expected, expected_cov = load_vectors(path, VOCAB, seed=3)
    np.testing.assert_array_equal(emb, expected)
    assert coverage == expected_cov


def test_load_vectors_seed_changes_only_the_misses(tmp_path):
    path = tmp_path / "g.txt"
    _write_glove(path)
    a, _ = load_vectors(path, VOCAB, seed=0)
    b, _ = load_vectors(path, VOCAB, seed=1)
    du = VOCAB.index("du")
    assert not np.allclose(a[du], b[du])
    np.testing.assert_array_equal(a[VOCAB.index("quelle")], b[VOCAB.index("quelle")])


def test_load_vectors_checks_dim_and_path(tmp_path):
    path = tmp_path / "g.txt"
    _write_glove(path)
    with pytest.raises(InvalidArgument, match="dim=5"):
        load_vectors(path, VOCAB, dim=5)
    with pytest.raises(NotFound, match="nope.txt"):
        load_vectors(tmp_path / "nope.txt", VOCAB)


# ---------------------------------------------------------------- corpora

GIGA_EN = [
    "What is light?\n",
    "Who are we? More text after the question.\n",
    "The cat sat.\n",
    "Why. Not?\n",
    "What is this?\n",
    "where is it?\n",  # lowercase "wh" does not match the lecture's filter
]
GIGA_FR = [
    "Qu'est-ce que la lumière?\n",
    "Où sommes-nous? Suite.\n",
    "Le chat s'est assis.\n",
    "Pourquoi?\n",
    "Ceci. Quoi?\n",
    "Où est-ce?\n",
]


@pytest.fixture()
def giga_prefix(tmp_path):
    prefix = tmp_path / "giga-fren.release2.fixed"
    (tmp_path / "giga-fren.release2.fixed.en").write_text("".join(GIGA_EN), encoding="utf-8")
    (tmp_path / "giga-fren.release2.fixed.fr").write_text("".join(GIGA_FR), encoding="utf-8")
    return prefix


def _oracle_pairs():
    out = []
    for en, fr in zip(GIGA_EN, GIGA_FR):
        me, mf = re.search(r"^(Wh[^?.!]+\?)", en), re.search(r"^([^?.!]+\?)", fr)
        if me and mf:
            out.append((me.group(1), mf.group(1)))
    return out


def test_giga_french_keeps_only_question_pairs(giga_prefix):
    expected = _oracle_pairs()
    assert expected == [("What is light?", "Qu'est-ce que la lumière?"), ("Who are we?", "Où sommes-nous?")]
    assert giga_french(giga_prefix, direction="en-fr") == expected
    assert giga_french(str(giga_prefix)) == [(fr, en) for en, fr in expected]
    assert giga_french(giga_prefix, limit=1) == [(fr, en) for en, fr in expected[:1]]


def test_giga_french_errors(giga_prefix, tmp_path):
    with pytest.raises(NotFound, match="missing.en"):
        giga_french(tmp_path / "missing")
    with pytest.raises(InvalidArgument, match="de-en"):
        giga_french(giga_prefix, direction="de-en")


def test_bundled_questions_load_in_both_directions():
    fr_en, en_fr = bundled_questions(), bundled_questions("en-fr")
    assert len(fr_en) > 300
    assert en_fr == [(en, fr) for fr, en in fr_en]
    assert ("Quelle est la population du Canada ?", "What is the population of Canada?") in fr_en
    for en, fr in en_fr:
        assert en.endswith("?") and fr.endswith("?") and en.count("?") == fr.count("?") == 1
    assert len({en for en, _ in en_fr}) == len(en_fr)


def test_paraphrase_groups_exist():
    groups = paraphrase_groups()
    assert len(groups) >= 30
    english = {en for _, en in bundled_questions()}
    for g in groups:
        assert len(g) >= 2 and len(set(g)) == len(g) and set(g) <= english
