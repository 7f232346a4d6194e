import json
import os
import random
import time

import pytest

from mlupdates import tokenizer as bpe
from mlupdates.tokenizer import DEFAULT_SPECIAL_TOKENS, BPETokenizer, byte_to_unicode
from mlupdates.world import make_world

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # keep the reference on one core

UNICODE_SAMPLES = [
    "",
    "Crème brûlée, naïve façade, Ångström, straße.",
    "Emoji: 😀🎉 👩‍👩‍👧 and flags 🇫🇷",
    "日本語のテキスト، العربية, ελληνικά, русский",
    "tabs\tnew\nlines\r\n  spaces   \x00\x7f",
    "numbers ²½ 1234567 and _under_scores_",
]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], str]:
    world = make_world(seed=0)
    return world.corpus(100_000), "\n".join(world.corpus(20_000, part="valid"))


@pytest.fixture(scope="module")
def trained(corpus) -> dict[str, BPETokenizer]:
    docs, _ = corpus
    return {
        "gpt2": BPETokenizer.train(docs, 512),
        "none": BPETokenizer.train(docs, 512, pattern=None),
    }


@pytest.mark.parametrize("mode", ["gpt2", "none"])
def test_round_trip_is_exact_for_any_unicode(trained, mode):
    tok = trained[mode]
    for text in UNICODE_SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    rng = random.Random(0)
    text = "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(300)).encode("utf-8", "replace")
    text = text.decode("utf-8", "replace")
    assert tok.decode(tok.encode(text)) == text


def test_training_merges_the_most_frequent_pair_first():
    # Wikipedia's BPE example: "aa" occurs 4 times (overlaps count), then "ab" ties with
    # "Za" (Z = "aa") and wins because bytes come before merged tokens.
    tok = BPETokenizer.train("aaabdaaabac", 259, special_tokens=(), pattern=None)
    merges = [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]
    assert merges == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab")]
    ids = tok.encode("aaabdaaabac")
    assert [tok.token_bytes(i) for i in ids] == [b"aaab", b"d", b"aaab", b"a", b"c"]
    assert tok.vocab_size == 259


def test_ties_follow_gpt2_byte_order_not_raw_byte_order():
    # (x, space) and (space, y) both occur once. By raw byte value the space (0x20) is
    # smaller than "x" (0x78); in GPT-2's byte-to-unicode order printable bytes come first.
    tok = BPETokenizer.train("x y", 257, special_tokens=(), pattern=None)
    assert [tok.vocab[256]] == [b"x "]
    assert byte_to_unicode()[32] == "Ġ" and byte_to_unicode()[ord("x")] == "x"


def test_incremental_pair_updates_match_the_tokenizers_example():
    h, e, l, o = b"helo"  # noqa: E741
    word, changes = bpe._merge_word([h, e, l, l, o], l, l, 300)
    assert word == [h, e, 300, o]
    assert changes == [((e, l), -1), ((e, 300), 1), ((l, o), -1), ((300, o), 1)]
    word, changes = bpe._merge_word([7, 8, 7, 8], 7, 8, 300)  # back-to-back occurrences
    assert word == [300, 300]
    assert sorted(changes) == [((8, 7), -1), ((300, 7), -1), ((300, 7), 1), ((300, 300), 1)]


def test_special_tokens_are_single_ids_and_never_learned(trained):
    tok = BPETokenizer.train(["hi<|endoftext|>hi<|endoftext|>"] * 50, 300, pattern=None)
    assert not any(b"<" in t or b"|" in t for t in tok.vocab[256:])  # no merge crossed one
    eot = tok.special_tokens["<|endoftext|>"]
    assert list(tok.special_tokens.values()) == list(range(tok.vocab_size - 4, tok.vocab_size))
    ids = tok.encode("hi<|endoftext|>hi<|user|>")
    assert ids.count(eot) == 1 and ids[-1] == tok.special_tokens["<|user|>"]
    assert tok.decode(ids) == "hi<|endoftext|>hi<|user|>"
    plain = tok.encode("<|endoftext|>", allow_special=False)  # untrusted text
    assert eot not in plain and tok.decode(plain) == "<|endoftext|>"
    assert set(trained["gpt2"].special_tokens) == set(DEFAULT_SPECIAL_TOKENS)


def test_save_and_load_give_the_same_tokenizer(trained, corpus, tmp_path):
    _, valid = corpus
    for mode, tok in trained.items():
        path = tmp_path / f"{mode}.json"
        tok.save(path)
        back = BPETokenizer.load(path)
        assert back.vocab == tok.vocab and back.merges == tok.merges
        assert back.special_tokens == tok.special_tokens and back.pattern == tok.pattern
        assert back.encode(valid[:3000]) == tok.encode(valid[:3000])
    (tmp_path / "bad.json").write_text(json.dumps({"merges": []}))
    with pytest.raises(ValueError, match=r"is not a tokenizer saved by BPETokenizer\.save"):
        BPETokenizer.load(tmp_path / "bad.json")


def test_training_is_fast_and_compresses(corpus):
    docs, valid = corpus
    start = time.perf_counter()
    tok = BPETokenizer.train(docs, 512, pattern=None)  # the slower, unsplit configuration
    assert time.perf_counter() - start < 5.0
    assert len(tok.encode(valid)) < 0.35 * len(valid.encode("utf-8"))


def test_errors_name_the_argument_and_range(trained):
    tok = trained["gpt2"]
    with pytest.raises(ValueError, match=r"vocab_size=100 must be in \[260, 1000000\]"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(ValueError, match="text is empty"):
        BPETokenizer.train(["", ""], 300)
    with pytest.raises(ValueError, match="must be distinct non-empty strings"):
        BPETokenizer([], special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match=r"merge #0 \(65, 66\) -> 300 is not consistent"):
        BPETokenizer([(65, 66, 300)])
    with pytest.raises(ValueError, match=r"token id 9999 must be in \[0, 511\]"):
        tok.decode([9999])
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"abc")  # type: ignore[arg-type]


# --- Parity with Hugging Face tokenizers ---------------------------------------------


def _reference(docs: list[str], vocab_size: int, use_regex: bool):
    """tokenizers' byte-level BPE, configured as the module docstring describes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    ref = Tokenizer(models.BPE())
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    ref.train_from_iterator(docs, trainer)
    return ref


TO_BYTE = {c: b for b, c in byte_to_unicode().items()}


def _as_bytes(token: str) -> bytes:
    """A token as ``tokenizers`` writes it (``Ġthe``) back to its bytes (``b" the"``)."""
    return bytes(TO_BYTE[c] for c in token)


def _reference_merges(ref) -> list[tuple[bytes, bytes]]:
    merges = json.loads(ref.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(_as_bytes(a), _as_bytes(b)) for a, b in pairs]


def _our_merges(tok: BPETokenizer) -> list[tuple[bytes, bytes]]:
    return [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]  # dicts keep rank order


@pytest.mark.parametrize("mode", ["none", "gpt2"])
def test_same_merges_and_compression_as_tokenizers(trained, corpus, mode):
    docs, valid = corpus
    tok = trained[mode]
    ref = _reference(docs, 512, use_regex=mode == "gpt2")
    assert ref.get_vocab_size() == tok.vocab_size == 512
    assert _our_merges(tok) == _reference_merges(ref)  # all 252, in the same order
    ours = [tok.token_bytes(i) for i in tok.encode(valid)]
    theirs = [_as_bytes(t) for t in ref.encode(valid).tokens]
    assert ours == theirs
    n_bytes = len(valid.encode("utf-8"))
    assert abs(len(ours) / n_bytes - len(theirs) / n_bytes) <= 0.01 * len(theirs) / n_bytes


def test_same_merges_as_tokenizers_on_non_ascii_repetitive_text():
    rng = random.Random(1)
    words = ["café", "naïve", "😀", "日本語", "straße", "aaaa", "abab", " ", "\n", "!!"]
    docs = ["".join(rng.choice(words) for _ in range(100)) for _ in range(50)]
    tok = BPETokenizer.train(docs, 700, pattern=None)
    ref = _reference(docs, 700, use_regex=False)
    assert _our_merges(tok) == _reference_merges(ref)
