"""Tests of mlupdates.plugins: the API and its OpenAPI document, tool calls, the agent loop."""

from __future__ import annotations

import socket
import zlib

import httpx
import numpy as np
import pytest

from mlupdates import plugins as P


def fake_embed(texts):
    """Deterministic bag-of-words vectors (crc32 buckets), unit length."""
    out = np.zeros((len(texts), 256))
    for row, text in enumerate(texts):
        for word in text.lower().replace("?", " ").replace(",", " ").split():
            out[row, zlib.crc32(word.encode()) % 256] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def fake_search(query: str, k: int) -> list[dict[str, str]]:
    return [{"text": f"passage {i} about {query}", "source": f"doc{i}.md"} for i in range(k)]


@pytest.fixture(scope="module")
def server():
    with P.BackgroundServer(P.create_app(fake_search)) as srv:
        yield srv


@pytest.fixture(scope="module")
def tools(server):
    return {t.name: t for t in P.fetch_tools(server.url)}


@pytest.fixture
def client():
    with httpx.Client(timeout=5.0) as c:
        yield c


def test_openapi_document_describes_every_operation(server, tools):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert set(tools) == {"get_order_status", "check_stock", "create_return", "search_handbook"}
    order = tools["get_order_status"]
    assert (order.method, order.path, order.locations) == (
        "GET",
        "/orders/{order_id}",
        {"order_id": "path"},
    )
    assert order.parameters["required"] == ["order_id"]
    assert order.parameters["properties"]["order_id"]["pattern"] == P.ORDER_PATTERN
    stock = tools["check_stock"].parameters["properties"]
    assert stock["store"]["enum"] == ["Hamburg", "Rotterdam", "Lyon"]  # $ref resolved
    assert tools["create_return"].locations == {"order_id": "body", "reason": "body"}
    assert all(t.answer_template and t.description for t in tools.values())


def test_calls_that_succeed(server, tools, client):
    r = P.call_tool(client, server.url, tools["get_order_status"], {"order_id": "HL-1042"})
    assert r.ok and r.status == 200 and r.data["status"] == "shipped"
    r = P.call_tool(
        client, server.url, tools["check_stock"], {"model": "City 300", "store": "Lyon"}
    )
    assert r.ok and r.data["in_stock"] == P.STOCK["Lyon"]["City 300"]
    r = P.call_tool(client, server.url, tools["search_handbook"], {"q": "brakes", "k": 2})
    assert r.ok and [p["source"] for p in r.data] == ["doc0.md", "doc1.md"]
    r = P.call_tool(
        client, server.url, tools["create_return"], {"order_id": "HL-3310", "reason": "faulty"}
    )
    assert r.ok and r.status == 201 and r.data["return_id"].startswith("RMA-")
    assert P.render_answer(tools["create_return"], r).startswith(f"Return {r.data['return_id']}")


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("get_order_status", {"order_id": "1042"}, "does not match"),
        ("get_order_status", {}, "'order_id' is a required property"),
        ("check_stock", {"model": "City 300", "store": "Paris"}, "store: 'Paris' is not one of"),
        (
            "check_stock",
            {"model": "City 300", "store": "Lyon", "colour": "red"},
            "'colour' was unexpected",
        ),
        ("search_handbook", {"q": "brakes", "k": 9}, "k: 9 is greater than the maximum of 5"),
        (
            "create_return",
            {"order_id": "HL-1187", "reason": "bored"},
            "reason: 'bored' is not one of",
        ),
    ],
)
def test_bad_arguments_give_a_clear_error_and_no_request(
    server, tools, client, tool, arguments, message
):
    result = P.call_tool(client, server.url, tools[tool], arguments)
    assert not result.ok and result.status is None and message in result.error


def test_client_validation_agrees_with_the_server(server, tools, client):
    """The JSON Schema read from the OpenAPI document accepts exactly what FastAPI accepts."""
    cases = [
        ("get_order_status", {"order_id": "HL-1042"}),
        ("get_order_status", {"order_id": "HL-42"}),
        ("get_order_status", {"order_id": "hl-1042"}),
        ("check_stock", {"model": "Gravel 900", "store": "Rotterdam"}),
        ("check_stock", {"model": "Gravel 9000", "store": "Rotterdam"}),
        ("search_handbook", {"q": "ok?"}),
        ("search_handbook", {"q": "no"}),
        ("search_handbook", {"q": "brakes", "k": 0}),
        ("create_return", {"order_id": "HL-1187", "reason": "wrong size"}),
        ("create_return", {"order_id": "HL-1187"}),
    ]
    for name, arguments in cases:
        client_ok = not P.validate_arguments(tools[name], arguments)
        result = P.call_tool(client, server.url, tools[name], arguments, validate=False)
        assert client_ok == (result.status != 422), (name, arguments, result)


def test_server_side_errors_become_results(server, tools, client):
    bad = P.call_tool(
        client, server.url, tools["get_order_status"], {"order_id": "1042"}, validate=False
    )
    assert bad.status == 422 and "order_id" in bad.error and "pattern" in bad.error
    missing = P.call_tool(client, server.url, tools["get_order_status"], {"order_id": "HL-9999"})
    assert (missing.ok, missing.status, missing.error) == (False, 404, "no order HL-9999")
    early = P.call_tool(
        client, server.url, tools["create_return"], {"order_id": "HL-2291", "reason": "faulty"}
    )
    assert early.status == 409 and "not delivered" in early.error
    assert P.render_answer(tools["create_return"], early).startswith("Sorry, create_return failed")


def test_an_unreachable_server_is_an_error_result(tools, client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    r = P.call_tool(
        client, f"http://127.0.0.1:{port}", tools["get_order_status"], {"order_id": "HL-1042"}
    )
    assert not r.ok and r.status is None and r.error.startswith("request failed")


def test_agent_chooses_fills_calls_and_answers(server):
    planner = P.EmbeddingPlanner(fake_embed)
    run = P.run_agent("What is the delivery status of my order HL-2291?", server.url, planner)
    assert run.answer == "Order HL-2291 is in preparation; delivery date 2026-12-09."
    run = P.run_agent("Is the Gravel 900 in stock in the Hamburg store?", server.url, planner)
    assert run.answer == "The Hamburg store has 2 Gravel 900 in stock."
    run = P.run_agent(
        "What is the delivery status of my order 2291?", server.url, planner
    )  # no order number
    assert run.answer.startswith("Sorry, get_order_status failed") and "required" in run.answer
    assert "not sent" in run.render()


def test_rules_fill_arguments_from_the_schema(tools):
    args = P.extract_arguments("Return HL-1187, it came in the wrong size", tools["create_return"])
    assert args == {"order_id": "HL-1187", "reason": "wrong size"}
    assert P.extract_arguments("warranty on frames", tools["search_handbook"]) == {
        "q": "warranty on frames",
        "k": 1,
    }


def test_the_same_tool_in_function_calling_and_mcp_form(tools):
    tool = tools["check_stock"]
    fn = P.to_function_tool(tool)
    assert fn["type"] == "function" and fn["function"]["parameters"] is tool.parameters
    mcp = P.to_mcp_tool(tool)
    assert (mcp["name"], mcp["inputSchema"]) == ("check_stock", tool.parameters)


def test_tools_from_openapi_refuses_other_documents():
    with pytest.raises(ValueError, match="OpenAPI 3"):
        P.tools_from_openapi({"swagger": "2.0"})
    spec = {"openapi": "3.1.0", "paths": {"/x": {"get": {"summary": "no id"}}}}
    with pytest.raises(ValueError, match="operationId"):
        P.tools_from_openapi(spec)
    with pytest.raises(ValueError, match="no operation"):
        P.EmbeddingPlanner(fake_embed).choose("anything", [])


def test_server_stops_and_frees_its_port():
    srv = P.BackgroundServer(P.create_app()).start()
    assert (
        httpx.get(f"{srv.url}/stock", params={"model": "City 300", "store": "Lyon"}).status_code
        == 200
    )
    srv.stop()
    assert not srv.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/openapi.json", timeout=1.0)
