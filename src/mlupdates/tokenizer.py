"""Byte-pair encoding (BPE) from scratch, on bytes, as in GPT-2.

A language model reads integers, not characters. BPE (Sennrich, Haddow and Birch,
"Neural Machine Translation of Rare Words with Subword Units", arXiv:1508.07909) builds a
vocabulary by starting from single symbols and repeatedly merging the most frequent
adjacent pair into a new symbol. GPT-2 (Radford et al., 2019) runs it on the 256 byte
values of UTF-8 text, so every string, in any script and with any emoji, is encoded with no
unknown token, and decoding is exact.

Training, as implemented by :meth:`BPETokenizer.train`:

1. Cut the text at special tokens (never merged with anything), then into *chunks* with a
   regular expression (``pattern``; GPT-2's by default, so that merges never cross from a
   word into the following space or punctuation; ``pattern=None`` keeps each piece whole).
2. Count every adjacent pair of tokens inside the chunks; overlapping pairs count twice
   (``aaa`` holds two ``(a, a)``), as in the ``tokenizers`` library and minbpe.
3. Merge the most frequent pair into a new token wherever it occurs (left to right), update
   the counts of the neighbouring pairs only, and repeat until the vocabulary is full.
   A max-heap with lazy deletion finds the top pair, so a merge costs time proportional to
   its number of occurrences, not to the length of the text.

*Tie-breaking* (which pair wins when counts are equal) is deterministic: the smaller pair
wins, comparing left tokens first, where bytes are ordered as in GPT-2's byte-to-unicode
table (:func:`byte_to_unicode`: printable bytes first, then the others) and merged tokens
come after every byte, oldest first. That is the order in which Hugging Face ``tokenizers``
numbers its byte-level alphabet, and adopting it makes the two trainers comparable merge
for merge. Like ``tokenizers``, a merge whose bytes already form a token reuses that
token's id, so no byte string appears twice in the vocabulary.

*Parity with* ``tokenizers`` (``tests/test_tokenizer.py``): ``models.BPE`` trained by
``BpeTrainer`` with the whole byte alphabet (``ByteLevel.alphabet()``) as initial alphabet,
the same special tokens and the same ``vocab_size``, and a ``ByteLevel`` pre-tokenizer
without prefix space. With ``use_regex=False`` on their side and ``pattern=None`` here,
neither side splits, and the merges are asserted identical. With GPT-2's regex on both
sides they are identical too on ASCII text; on other text they can differ because this
module uses Python's ``re``, which lacks ``\\p{L}``/``\\p{N}``: letters are approximated by
``[^\\W\\d_]`` and numbers by ``\\d`` (which misses ``²`` or ``½``). On held-out text the
test asserts the same tokens, one for one, and so the same compression (tokens per byte).
One difference is left out of the comparison on purpose: ``tokenizers`` does not cut the
training text at special tokens (its trainer sees ``<|endoftext|>`` as ordinary text), so the
test passes documents without them, as a list, to both trainers.

Vocabulary layout: ids 0-255 are the bytes, then merged tokens in the order they were
learned, then the special tokens.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

#: GPT-2's pre-tokenization regex, written for Python's ``re`` (see the module docstring).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
#: End of a document, and the markers of a chat turn (used by the assistant model).
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>")
FORMAT = "mlupdates-bpe/1"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (its ``bytes_to_unicode``).

    Printable bytes map to themselves; the 68 others (controls, space, ...) to characters
    from U+0100 up, so a space is shown as ``Ġ``. ``tokenizers`` writes merges with it.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


# Tie-break order of the 256 bytes: by the code point byte_to_unicode() gives them.
_TABLE = byte_to_unicode()
_BYTE_ORDER = {b: rank for rank, b in enumerate(sorted(range(256), key=_TABLE.__getitem__))}


def _merge_word(
    word: list[int], a: int, b: int, new: int
) -> tuple[list[int], list[tuple[tuple[int, int], int]]]:
    """Replace each ``(a, b)`` in ``word`` (left to right) by ``new``.

    Also returns the changes to the neighbouring pair counts, e.g. merging ``(l, l)`` in
    ``h e l l o`` gives ``((e, l), -1), ((e, ll), +1), ((l, o), -1), ((ll, o), +1)``.
    """
    out: list[int] = []
    changes: list[tuple[tuple[int, int], int]] = []
    i = start = 0
    n = len(word)
    while True:
        try:
            i = word.index(a, i)  # C-speed jump to the next candidate
        except ValueError:
            break
        if i + 1 >= n:
            break
        if word[i + 1] != b:
            i += 1
            continue
        out.extend(word[start:i])
        if out:  # left neighbour (possibly a token this very call just made)
            changes += [((out[-1], a), -1), ((out[-1], new), 1)]
        out.append(new)
        if i + 2 < n:
            changes += [((b, word[i + 2]), -1), ((new, word[i + 2]), 1)]
        i = start = i + 2
    out.extend(word[start:])
    return out, changes


class BPETokenizer:
    """A trained byte-level BPE vocabulary: ``encode`` text to ids and ``decode`` back.

    Build one with :meth:`train` or :meth:`load`. ``merges`` lists ``(left, right, new)``
    ids in the order they were learned.
    """

    def __init__(
        self,
        merges: Iterable[tuple[int, int, int]],
        special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
        pattern: str | None = GPT2_PATTERN,
    ) -> None:
        self.pattern = pattern
        self._split = re.compile(pattern) if pattern else None
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]
        self.merges: dict[tuple[int, int], tuple[int, int]] = {}  # pair -> (rank, new id)
        for rank, (a, b, new) in enumerate(merges):
            n = len(self.vocab)
            if not (a < n and b < n and new <= n) or (
                new < n and self.vocab[new] != self.vocab[a] + self.vocab[b]
            ):
                raise ValueError(f"merge #{rank} ({a}, {b}) -> {new} is not consistent")
            if new == n:
                self.vocab.append(self.vocab[a] + self.vocab[b])
            self.merges[(a, b)] = (rank, new)
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or "" in specials:
            raise ValueError(f"special_tokens={specials} must be distinct non-empty strings")
        self.special_tokens = {s: len(self.vocab) + i for i, s in enumerate(specials)}
        self._special_of_id = {i: s for s, i in self.special_tokens.items()}
        longest_first = sorted(specials, key=len, reverse=True)
        self._special_split = (
            re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if specials else None
        )
        self._cache: dict[bytes, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merged tokens + special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    def _pieces(self, text: str, allow_special: bool) -> Iterable[tuple[str, bool]]:
        """``(piece, is_special)`` in order: text cut at special tokens."""
        if not (allow_special and self._special_split):
            yield text, False
            return
        for k, piece in enumerate(self._special_split.split(text)):
            if piece:
                yield piece, k % 2 == 1  # re.split puts captured separators at odd indices

    def _chunks(self, piece: str) -> list[str]:
        return self._split.findall(piece) if self._split else [piece]

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
        pattern: str | None = GPT2_PATTERN,
    ) -> BPETokenizer:
        """Learn merges from ``text`` (a string, or documents that pairs never straddle)
        until the vocabulary holds ``vocab_size`` ids, special tokens included.

        Stops early, with a smaller vocabulary, if no adjacent pair is left to merge.
        """
        specials = tuple(special_tokens)
        low = 256 + len(specials)
        if not low <= vocab_size <= 1_000_000:
            raise ValueError(
                f"vocab_size={vocab_size} must be in [{low}, 1000000]: 256 bytes + "
                f"{len(specials)} special tokens at least"
            )
        docs = [text] if isinstance(text, str) else list(text)
        if not any(docs):
            raise ValueError("text is empty: nothing to learn merges from")
        helper = cls([], specials, pattern)
        counts: Counter[bytes] = Counter()
        for doc in docs:
            for piece, special in helper._pieces(doc, allow_special=True):
                if not special:
                    counts.update(c.encode("utf-8") for c in helper._chunks(piece))
        words = [list(chunk) for chunk in counts]
        freqs = list(counts.values())

        pair_counts: Counter[tuple[int, int]] = Counter()
        where: dict[tuple[int, int], set[int]] = {}  # pair -> words that (may) contain it
        for i, word in enumerate(words):
            for pair in pairwise(word):
                pair_counts[pair] += freqs[i]
                where.setdefault(pair, set()).add(i)

        def order(t: int) -> int:  # tie-break rank of a token (module docstring)
            return _BYTE_ORDER[t] if t < 256 else t

        heap = [(-c, order(a), order(b), (a, b)) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)
        vocab = [bytes([i]) for i in range(256)]
        id_of = {tok: i for i, tok in enumerate(vocab)}
        merges: list[tuple[int, int, int]] = []
        while len(vocab) < vocab_size - len(specials) and heap:
            neg_count, _, _, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -neg_count:  # stale entry: the count fell since it was pushed
                if count > 0:
                    heapq.heappush(heap, (-count, order(pair[0]), order(pair[1]), pair))
                continue
            a, b = pair
            token = vocab[a] + vocab[b]
            new = id_of.setdefault(token, len(vocab))
            if new == len(vocab):
                vocab.append(token)
            merges.append((a, b, new))
            born: set[tuple[int, int]] = set()
            for i in where.pop(pair, set()):
                words[i], changes = _merge_word(words[i], a, b, new)
                for p, delta in changes:
                    pair_counts[p] += delta * freqs[i]
                    if delta > 0:
                        where.setdefault(p, set()).add(i)
                        born.add(p)
            del pair_counts[pair]
            for p in sorted(born):
                heapq.heappush(heap, (-pair_counts[p], order(p[0]), order(p[1]), p))
        return cls(merges, specials, pattern)

    def _encode_chunk(self, data: bytes) -> list[int]:
        """Apply the merges to one chunk, lowest rank first (leftmost on equal rank)."""
        if data in self._cache:
            return self._cache[data]
        ids: list[int | None] = list(data)
        n = len(ids)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))  # a linked list of tokens
        heap = [(*self.merges[p], i) for i, p in enumerate(pairwise(ids)) if p in self.merges]
        heapq.heapify(heap)
        while heap:
            rank, new, i = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] is None or j >= n or self.merges.get((ids[i], ids[j])) != (rank, new):
                continue  # stale: one side was merged into something else meanwhile
            ids[i], ids[j] = new, None
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            for left in (prv[i], i):  # the two pairs the new token now belongs to
                if left >= 0 and nxt[left] < n:
                    m = self.merges.get((ids[left], ids[nxt[left]]))
                    if m:
                        heapq.heappush(heap, (*m, left))
        out = [t for t in ids if t is not None]
        if n <= 64:  # cache short chunks (words), which repeat; long ones rarely do
            self._cache[data] = out
        return out

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``. Special tokens in it become their single id, unless
        ``allow_special=False`` (for untrusted text: then they are encoded as bytes)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece, special in self._pieces(text, allow_special):
            if special:
                ids.append(self.special_tokens[piece])
            else:
                for chunk in self._chunks(piece):
                    ids += self._encode_chunk(chunk.encode("utf-8"))
        return ids

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (a special token's UTF-8 text)."""
        if token in self._special_of_id:
            return self._special_of_id[token].encode("utf-8")
        if not 0 <= token < len(self.vocab):
            raise ValueError(f"token id {token} must be in [0, {self.vocab_size - 1}]")
        return self.vocab[token]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; exact for the output of :meth:`encode`. A slice that cuts a
        multi-byte character shows it as U+FFFD (the replacement character)."""
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    def save(self, path: str | Path) -> None:
        """Write the merges, special tokens and pattern as JSON (a few kilobytes)."""
        merges = [[a, b, new] for (a, b), (_, new) in sorted(self.merges.items(), key=lambda kv: kv[1])]  # fmt: skip
        state = {"format": FORMAT, "pattern": self.pattern, "merges": merges,
                 "special_tokens": list(self.special_tokens)}  # fmt: skip
        Path(path).write_text(json.dumps(state) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`."""
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tokenizer saved by BPETokenizer.save ({FORMAT})")
        return cls(map(tuple, state["merges"]), state["special_tokens"], state["pattern"])
