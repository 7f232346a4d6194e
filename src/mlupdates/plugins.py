"""Plug-ins: a web API that describes itself in OpenAPI, and a loop that lets a model use it.

A plug-in, in the sense of ChatGPT plug-ins (2023) and the Copilot plug-ins Microsoft built
on the same format, is an ordinary HTTP API plus a machine-readable description of it: an
OpenAPI document listing each operation, what it does in words, and the JSON Schema of its
arguments. The assistant reads the description, decides which operation serves the user's
request, writes the arguments as JSON, and the host program makes the HTTP call and hands
the result back. Function calling (a JSON Schema per function in the model API) and the
Model Context Protocol (``tools/list`` returns a name, a description and an
``inputSchema`` per tool) keep exactly this shape; :func:`to_function_tool` and
:func:`to_mcp_tool` convert one into the others.

This module has both sides:

* :func:`create_app` builds a FastAPI application for an invented bike shop (order status,
  stock, returns and, optionally, a search over the shop's handbook). FastAPI derives the
  OpenAPI document from the type annotations and serves it at ``/openapi.json``.
  :class:`BackgroundServer` runs it with uvicorn in a thread on a free local port.
* :func:`fetch_tools` turns the OpenAPI document into :class:`Tool` objects,
  :func:`validate_arguments` checks arguments against a tool's JSON Schema with the
  ``jsonschema`` library, :func:`call_tool` makes the HTTP request and always returns a
  :class:`ToolResult` (an error is a result, never an exception), and :func:`run_agent`
  is the loop: choose, fill in, validate, call, answer.

The "model" that chooses the operation here is small and plain: :class:`EmbeddingPlanner`
embeds the request and each operation's summary and description with a sentence encoder
and picks the most similar operation, then fills the arguments by rules read from the
schema (a ``pattern`` is searched for in the request, an ``enum`` value must be named in
it, a free-text string receives the request itself). A language model does both steps by
generating the JSON; everything around it is the same.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from pydantic import BaseModel, Field

ORDER_PATTERN = r"^HL-\d{4}$"

#: The shop's orders (invented): the API answers from these.
ORDERS: dict[str, dict[str, Any]] = {
    "HL-1042": {"status": "shipped", "items": ["Trekking 500"], "delivery_date": "2026-12-02"},
    "HL-1187": {
        "status": "delivered",
        "items": ["City 300", "rear rack"],
        "delivery_date": "2026-11-20",
    },
    "HL-2291": {
        "status": "in preparation",
        "items": ["E-Commuter 7"],
        "delivery_date": "2026-12-09",
    },
    "HL-3310": {"status": "delivered", "items": ["Gravel 900"], "delivery_date": "2026-11-14"},
}


class BikeModel(StrEnum):
    city_300 = "City 300"
    trekking_500 = "Trekking 500"
    gravel_900 = "Gravel 900"
    e_commuter_7 = "E-Commuter 7"


class Store(StrEnum):
    hamburg = "Hamburg"
    rotterdam = "Rotterdam"
    lyon = "Lyon"


#: Bikes in stock per store and model (invented).
STOCK: dict[str, dict[str, int]] = {
    "Hamburg": {"City 300": 4, "Trekking 500": 0, "Gravel 900": 2, "E-Commuter 7": 1},
    "Rotterdam": {"City 300": 7, "Trekking 500": 3, "Gravel 900": 0, "E-Commuter 7": 5},
    "Lyon": {"City 300": 2, "Trekking 500": 1, "Gravel 900": 1, "E-Commuter 7": 0},
}

ReturnReason = Literal["wrong size", "damaged in transport", "faulty", "changed my mind"]


class OrderStatus(BaseModel):
    order_id: str
    status: str
    items: list[str]
    delivery_date: str


class StockLevel(BaseModel):
    model: str
    store: str
    in_stock: int


class ReturnRequest(BaseModel):
    order_id: str = Field(pattern=ORDER_PATTERN, description="Order number: HL and four digits.")
    reason: ReturnReason = Field(description="Why the order goes back.")


class ReturnCreated(BaseModel):
    return_id: str
    order_id: str
    shipping: str


class Passage(BaseModel):
    text: str
    source: str


Search = Callable[[str, int], list[dict[str, str]]]
"""``search(query, k)`` -> up to ``k`` passages as ``{"text": ..., "source": ...}``."""


def create_app(search: Search | None = None) -> FastAPI:
    """The shop's API. With ``search``, it also offers ``GET /search`` over the handbook.

    Each operation carries an ``x-answer-template`` extension: a sentence with ``{field}``
    slots that a client can fill from the JSON result. It stands in for the language
    model writing the answer from the result, and keeps the client free of per-operation
    code.
    """
    app = FastAPI(
        title="Harbor Lane shop API",
        version="1.0.0",
        description="Orders, stock and returns of the Harbor Lane bicycle shop.",
    )
    returns: list[str] = []

    @app.get(
        "/orders/{order_id}",
        operation_id="get_order_status",
        summary="Look up the delivery status of a customer's order",
        description="Where an order is: its status, its items and the delivery date.",
        response_model=OrderStatus,
        openapi_extra={
            "x-answer-template": "Order {order_id} is {status}; delivery date {delivery_date}."
        },
    )
    def get_order_status(
        order_id: Annotated[
            str, PathParam(pattern=ORDER_PATTERN, description="Order number: HL and four digits.")
        ],
    ) -> OrderStatus:
        if order_id not in ORDERS:
            raise HTTPException(status_code=404, detail=f"no order {order_id}")
        return OrderStatus(order_id=order_id, **ORDERS[order_id])

    @app.get(
        "/stock",
        operation_id="check_stock",
        summary="Check how many bikes of a model a store has in stock",
        description="Availability of a bike model in one of the shop's stores.",
        response_model=StockLevel,
        openapi_extra={"x-answer-template": "The {store} store has {in_stock} {model} in stock."},
    )
    def check_stock(
        model: Annotated[BikeModel, QueryParam(description="The bike model.")],
        store: Annotated[Store, QueryParam(description="The store's city.")],
    ) -> StockLevel:
        count = STOCK[store.value][model.value]
        return StockLevel(model=model.value, store=store.value, in_stock=count)

    @app.post(
        "/returns",
        operation_id="create_return",
        summary="Send a delivered order back and open a return",
        description="Registers the return of an order and says how it is shipped back.",
        response_model=ReturnCreated,
        status_code=201,
        openapi_extra={
            "x-answer-template": "Return {return_id} is open for order {order_id}: {shipping}."
        },
    )
    def create_return(request: ReturnRequest) -> ReturnCreated:
        order = ORDERS.get(request.order_id)
        if order is None:
            raise HTTPException(status_code=404, detail=f"no order {request.order_id}")
        if order["status"] != "delivered":
            raise HTTPException(
                status_code=409,
                detail=f"order {request.order_id} is {order['status']}, not delivered yet",
            )
        returns.append(request.order_id)
        paid_by_shop = request.reason in ("damaged in transport", "faulty", "wrong size")
        shipping = (
            "prepaid label by email"
            if paid_by_shop
            else "return shipping is deducted from the refund"
        )
        return ReturnCreated(
            return_id=f"RMA-{len(returns):04d}", order_id=request.order_id, shipping=shipping
        )

    if search is not None:

        @app.get(
            "/search",
            operation_id="search_handbook",
            summary="Search the shop's customer handbook for an answer to a question",
            description="Warranty, returns, delivery, maintenance and e-bike care: passages "
            "of the handbook that answer a question, each with its source.",
            response_model=list[Passage],
            openapi_extra={"x-answer-template": "{text} (source: {source})"},
        )
        def search_handbook(
            q: Annotated[
                str, QueryParam(min_length=3, max_length=300, description="The question.")
            ],
            k: Annotated[int, QueryParam(ge=1, le=5, description="Passages to return.")] = 1,
        ) -> list[Passage]:
            return [Passage(**p) for p in search(q, k)]

    return app


class BackgroundServer:
    """Serve an ASGI app with uvicorn in a daemon thread on a free port of 127.0.0.1.

    Use as a context manager; the port is chosen by the operating system (bind to port 0),
    so several servers can run at once and nothing is hard-coded.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        import uvicorn

        self.host, self.timeout = host, timeout
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start within {self.timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the client: tools from an OpenAPI document ----------------------------------------


@dataclass(frozen=True)
class Tool:
    """One API operation as a model sees it: a name, words, and a JSON Schema of arguments.

    ``locations`` says where each argument goes in the HTTP request: ``"path"``,
    ``"query"`` or ``"body"``.
    """

    name: str
    description: str
    method: str
    path: str
    parameters: dict[str, Any]
    locations: dict[str, str]
    answer_template: str | None = None


def _resolve(schema: Any, spec: dict[str, Any]) -> Any:
    """Inline every local ``$ref`` (``#/components/schemas/...``) of ``schema``."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            target: Any = spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, spec)
        return {k: _resolve(v, spec) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, spec) for v in schema]
    return schema


def tools_from_openapi(spec: dict[str, Any]) -> list[Tool]:
    """One :class:`Tool` per operation of an OpenAPI 3 document.

    Path and query parameters and the properties of a JSON request body become the
    properties of one JSON Schema object, with ``additionalProperties: false`` so that an
    invented argument is rejected rather than silently dropped.
    """
    if not str(spec.get("openapi", "")).startswith("3."):
        raise ValueError(f"spec is not an OpenAPI 3 document (openapi={spec.get('openapi')!r})")
    tools = []
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if "operationId" not in op:
                raise ValueError(f"{method.upper()} {path} has no operationId to name the tool")
            properties: dict[str, Any] = {}
            required: list[str] = []
            locations: dict[str, str] = {}
            for param in op.get("parameters", []):
                schema = _resolve(param.get("schema", {}), spec)
                if "description" in param:
                    schema = {**schema, "description": param["description"]}
                properties[param["name"]] = schema
                locations[param["name"]] = param["in"]
                if param.get("required"):
                    required.append(param["name"])
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                schema = _resolve(body["schema"], spec)
                for name, prop in schema.get("properties", {}).items():
                    properties[name] = prop
                    locations[name] = "body"
                required += schema.get("required", [])
            parts = [p.strip().rstrip(".") for p in (op.get("summary"), op.get("description")) if p]
            description = ". ".join(parts) + "." if parts else ""
            parameters = {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            }
            tools.append(
                Tool(
                    op["operationId"],
                    description,
                    method.upper(),
                    path,
                    parameters,
                    locations,
                    op.get("x-answer-template"),
                )
            )
    return tools


def fetch_tools(base_url: str, client: httpx.Client | None = None) -> list[Tool]:
    """Download ``/openapi.json`` from a running API and turn it into tools."""
    own = client is None
    client = client or httpx.Client(timeout=10.0)
    try:
        response = client.get(f"{base_url}/openapi.json")
        response.raise_for_status()
        return tools_from_openapi(response.json())
    finally:
        if own:
            client.close()


def validate_arguments(tool: Tool, arguments: Any) -> list[str]:
    """Every way ``arguments`` breaks the tool's JSON Schema, as readable messages
    (empty when valid). Uses the ``jsonschema`` library (draft 2020-12, the dialect of
    OpenAPI 3.1)."""
    validator = jsonschema.Draft202012Validator(tool.parameters)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
    return [(f"{'.'.join(map(str, e.path))}: " if e.path else "") + e.message for e in errors]


@dataclass(frozen=True)
class ToolResult:
    """What happened when a tool was called: ``ok`` with ``data``, or an ``error`` message.

    ``status`` is the HTTP status code, or ``None`` when the call was refused before any
    request was sent (invalid arguments).
    """

    tool: str
    arguments: dict[str, Any]
    ok: bool
    status: int | None
    data: Any = None
    error: str | None = None


def call_tool(
    client: httpx.Client,
    base_url: str,
    tool: Tool,
    arguments: dict[str, Any],
    validate: bool = True,
) -> ToolResult:
    """Make the HTTP request for ``tool`` with ``arguments``; never raises for a bad call.

    Arguments are checked against the schema first (``validate=False`` skips the check, to
    see what the server itself says). A non-2xx answer becomes an error result carrying
    the server's ``detail``; a network failure becomes an error result too.
    """
    if validate:
        problems = validate_arguments(tool, arguments)
        if problems:
            return ToolResult(tool.name, arguments, False, None, error="; ".join(problems))
    path = tool.path
    query, body = {}, {}
    for name, value in arguments.items():
        where = tool.locations.get(name, "query")
        if where == "path":
            path = path.replace("{" + name + "}", str(value))
        elif where == "body":
            body[name] = value
        else:
            query[name] = value
    try:
        response = client.request(
            tool.method, base_url + path, params=query or None, json=body or None
        )
    except httpx.HTTPError as error:
        return ToolResult(tool.name, arguments, False, None, error=f"request failed: {error}")
    try:
        payload = response.json()
    except ValueError:
        payload = response.text
    if response.is_success:
        return ToolResult(tool.name, arguments, True, response.status_code, data=payload)
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if isinstance(detail, list):  # FastAPI's 422: a list of {loc, msg, ...}
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail
        )
    return ToolResult(tool.name, arguments, False, response.status_code, error=str(detail))


def to_function_tool(tool: Tool) -> dict[str, Any]:
    """The tool in the function-calling format of OpenAI's Chat Completions API."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def to_mcp_tool(tool: Tool) -> dict[str, Any]:
    """The tool as an MCP server lists it in its ``tools/list`` response."""
    return {"name": tool.name, "description": tool.description, "inputSchema": tool.parameters}


# --- choosing a tool and filling in its arguments ---------------------------------------


def _unanchored(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


def extract_arguments(request: str, tool: Tool) -> dict[str, Any]:
    """Fill the tool's arguments from the request text by rules read off the schema.

    * ``pattern``: the first match of the pattern in the request;
    * ``enum``: the enum value the request names (case-insensitive), longest first;
    * ``integer``: a number written in the request, else the schema's default;
    * other strings: the whole request (a search query).

    An argument the rules cannot find is left out; validation then reports it missing.
    """
    arguments: dict[str, Any] = {}
    lowered = request.lower()
    for name, schema in tool.parameters["properties"].items():
        options = schema.get("enum")
        if options is None and "const" in schema:
            options = [schema["const"]]
        if options is not None:
            named = [o for o in sorted(options, key=len, reverse=True) if str(o).lower() in lowered]
            if named:
                arguments[name] = named[0]
        elif "pattern" in schema:
            match = re.search(_unanchored(schema["pattern"]), request)
            if match:
                arguments[name] = match.group(0)
        elif schema.get("type") == "integer":
            number = re.search(r"\b\d+\b", request)
            if number:
                arguments[name] = int(number.group(0))
            elif "default" in schema:
                arguments[name] = schema["default"]
        elif schema.get("type") == "string":
            arguments[name] = request
    return arguments


@dataclass
class EmbeddingPlanner:
    """Chooses the operation whose summary and description are most similar to the request
    (cosine similarity of sentence embeddings), and fills its arguments by rules."""

    embed: Callable[[Sequence[str]], np.ndarray]

    def choose(self, request: str, tools: Sequence[Tool]) -> tuple[Tool, float]:
        if not tools:
            raise ValueError("tools is empty: the API offers no operation to choose")
        sims = self.embed([t.description for t in tools]) @ self.embed([request])[0]
        best = int(np.argmax(sims))
        return tools[best], float(sims[best])

    def arguments(self, request: str, tool: Tool) -> dict[str, Any]:
        return extract_arguments(request, tool)


def render_answer(tool: Tool, result: ToolResult) -> str:
    """A sentence for the user: the tool's answer template filled from the result, or the
    error said plainly."""
    if not result.ok:
        return f"Sorry, {tool.name} failed: {result.error}"
    data = result.data[0] if isinstance(result.data, list) and result.data else result.data
    if tool.answer_template and isinstance(data, dict):
        try:
            return tool.answer_template.format(**data)
        except (KeyError, IndexError):
            pass
    return f"{tool.name} returned {data}"


@dataclass
class AgentRun:
    """The transcript of one request: every step, and the final answer."""

    request: str
    steps: list[tuple[str, Any]] = field(default_factory=list)
    answer: str = ""

    def render(self) -> str:
        lines = [f"user: {self.request}"]
        lines += [f"  {kind}: {value}" for kind, value in self.steps]
        lines.append(f"assistant: {self.answer}")
        return "\n".join(lines)


def run_agent(
    request: str,
    base_url: str,
    planner: EmbeddingPlanner,
    client: httpx.Client | None = None,
    tools: Sequence[Tool] | None = None,
) -> AgentRun:
    """Read the API description, choose an operation, fill and check its arguments, call it
    and answer from the result. Invalid arguments or a failed call end in an answer that
    says what went wrong; nothing raises.

    One tool call per request: a language model would loop, reading each result and
    deciding whether to call another tool before answering; a rule-based planner has
    nothing to decide after the first call.
    """
    own = client is None
    client = client or httpx.Client(timeout=10.0)
    run = AgentRun(request)
    try:
        tools = list(tools) if tools is not None else fetch_tools(base_url, client)
        tool, similarity = planner.choose(request, tools)
        run.steps.append(("choose", f"{tool.name} (similarity {similarity:.2f})"))
        arguments = planner.arguments(request, tool)
        run.steps.append(("arguments", arguments))
        result = call_tool(client, base_url, tool, arguments)
        shown = result.data if result.ok else result.error
        run.steps.append(
            ("result", f"HTTP {result.status}: {shown}" if result.status else f"not sent: {shown}")
        )
        run.answer = render_answer(tool, result)
    finally:
        if own:
            client.close()
    return run
