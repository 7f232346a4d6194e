"""A local server that speaks OpenAI's Chat Completions API, for the book's tiny assistant.

Most programs that use a hosted language model talk to it over one HTTP interface, the Chat
Completions API: ``POST /v1/chat/completions`` with a JSON body naming a ``model`` and a list
of ``messages``, answered by a ``chat.completion`` object, or, with ``"stream": true``, by a
stream of ``chat.completion.chunk`` objects sent as server-sent events (``data: {...}`` lines
ending with ``data: [DONE]``). Because the interface is the contract, any server that
honours it can stand in for the real service: the official ``openai`` client only needs a
different ``base_url``. This module is such a server for chapter 2's assistant, so that
chapter 4 can show the client code a reader would point at the real service, run offline.

Run it with ``python -m mlupdates.serve [--host HOST] [--port PORT] [--model NAME]``. The
pieces are importable so that tests and notebooks can use them without the command line:

* :func:`create_app` builds the FastAPI application around any :class:`~mlupdates.gpt.GPT`
  and tokenizer (tests use a tiny untrained model);
* :func:`parse_request` validates a decoded JSON body and returns a :class:`ChatRequest`
  or raises :class:`APIError`, a pure function that needs no HTTP;
* :func:`generate_tokens` yields the new tokens of ``n`` replies one step at a time, the
  same tokens as :meth:`GPT.generate <mlupdates.gpt.GPT.generate>` draws;
* :class:`ServerThread` runs an application with uvicorn in a background thread on a free
  port, and stops it again.

What the tiny model can do limits what the server accepts. The assistant was fine-tuned on
single questions in chapter 2's chat template (:func:`mlupdates.chat.chat_prompt`), so the
prompt is built from the *last* user message only; system, developer and earlier messages
are validated but not shown to the model. Its context is 48 tokens, so prompts that leave
no room for a reply are refused. Sampling honours ``temperature``, ``top_p``, ``n``,
``seed`` and ``max_tokens`` (or ``max_completion_tokens``); parameters the model cannot
honour (tools, logprobs, stop strings, response formats...) are refused rather than
silently ignored. Any API key is accepted.

Every refusal uses the API's error object, ``{"error": {"message", "type", "param",
"code"}}``, with the status code OpenAI's API uses: 400 ``invalid_request_error`` for a body
that is not JSON, a missing or mistyped parameter, a value out of range or a prompt over
the context length; 404 with code ``model_not_found`` for an unknown model; 404 for an
unknown URL; 413 for a body over :data:`MAX_BODY_BYTES`. The checks run before any token
is generated, so a bad request costs microseconds and can never hang the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlupdates.chat import ASSISTANT, END, USER
from mlupdates.gpt import GPT, KVCache, sample_next_token
from mlupdates.runtime import resolve_seed
from mlupdates.tokenizer import BPETokenizer

log = logging.getLogger(__name__)

#: Name under which the book's assistant is served (the ``model`` field of a request).
MODEL_ID = "book-assistant"
#: Largest request body accepted, in bytes; a chat request for a 48-token model is tiny.
MAX_BODY_BYTES = 1_000_000
#: Most choices per request (OpenAI allows up to 128; the tiny model gains nothing from more).
MAX_N = 16
#: Roles accepted in ``messages``; ``tool`` and ``function`` are refused (the model has no tools).
ROLES = ("system", "developer", "user", "assistant")
#: Parameters of the real API that this server accepts and ignores (they do not change the reply).
IGNORED = frozenset(
    [
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "verbosity",
    ]
)
#: Parameters of the real API that the tiny model cannot honour: refused unless null.
UNSUPPORTED = frozenset(
    [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "response_format",
        "stop",
        "audio",
        "modalities",
        "prediction",
        "reasoning_effort",
        "web_search_options",
        "moderation",
    ]
)
#: Penalties are accepted only at their neutral value 0.
PENALTIES = ("presence_penalty", "frequency_penalty")
SUPPORTED = frozenset(
    [
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "seed",
        "stream",
        "stream_options",
    ]
)
_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class APIError(Exception):
    """A request the server refuses, with the fields of the API's error object.

    ``status`` is the HTTP status code; ``type`` is ``invalid_request_error`` for the
    client's mistakes and ``server_error`` for the server's own.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )

    def body(self) -> dict[str, dict[str, Any]]:
        """The JSON body the API sends with this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, ready for the model."""

    model: str
    question: str  # content of the last user message
    prompt_ids: list[int]
    max_tokens: int  # new tokens allowed per choice (fits in the context)
    temperature: float
    top_p: float
    n: int
    seed: int | None
    stream: bool
    include_usage: bool


# --- validation ---------------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: object) -> APIError:
    return APIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> APIError:
    return APIError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(name, "a decimal", value)
    if not math.isfinite(value):
        raise APIError(
            400,
            f"Invalid '{name}': expected a finite number, got {value}.",
            param=name,
            code="invalid_value",
        )
    if value < low:
        raise APIError(
            400,
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, "
            f"but got {value:g} instead.",
            param=name,
            code="decimal_below_min_value",
        )
    if value > high:
        raise APIError(
            400,
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, "
            f"but got {value:g} instead.",
            param=name,
            code="decimal_above_max_value",
        )
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", value)
    if value < low:
        raise APIError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if high is not None and value > high:
        raise APIError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _content_text(content: object, param: str) -> str:
    """The text of a message's ``content``: a string, or an array of text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid_type(param, "one of a string or array of objects", content)
    texts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(where, "an object", part)
        if part.get("type") != "text":
            raise APIError(
                400,
                f"Invalid value for '{where}.type': only 'text' content parts are "
                "supported by this server (the book's model reads text only).",
                param=f"{where}.type",
                code="invalid_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise _invalid_type(f"{where}.text", "a string", text)
        texts.append(text)
    return "".join(texts)


def _last_question(messages: object) -> str:
    """Validate ``messages`` and return the content of the last user message."""
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise APIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    question = None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if not isinstance(role, str):
            raise _invalid_type(f"{where}.role", "a string", role)
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES)
            raise APIError(
                400,
                f"Invalid value: '{role}'. Supported values are: {supported}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        if "content" not in message or message["content"] is None:
            raise _missing(f"{where}.content")
        text = _content_text(message["content"], f"{where}.content")
        if role == "user":
            question = text
    if question is None:
        raise APIError(
            400,
            "Invalid 'messages': the conversation needs at least one message with role 'user'.",
            param="messages",
            code="invalid_value",
        )
    return question


def encode_prompt(tok: BPETokenizer, question: str) -> list[int]:
    """Token ids of :func:`mlupdates.chat.chat_prompt` for ``question``, with any special-token
    text inside the question encoded as plain bytes, so a user cannot forge a turn marker."""
    special = tok.special_tokens
    return [
        special[USER],
        *tok.encode(question, allow_special=False),
        special[END],
        special[ASSISTANT],
    ]


def _context_error(
    context: int, prompt: int, completion: int | None, at_least: bool = False
) -> APIError:
    """The API's ``context_length_exceeded`` error, in wording modelled on OpenAI's."""
    if completion is None:
        size = f"{'at least ' if at_least else ''}{prompt}"
        message = (
            f"This model's maximum context length is {context} tokens, and at least one "
            f"must be left for the reply. However, your messages resulted in {size} "
            "tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {context} tokens. However, you "
            f"requested {prompt + completion} tokens ({prompt} in the messages, "
            f"{completion} in the completion). Please reduce the length of the messages "
            "or completion."
        )
    return APIError(400, message, param="messages", code="context_length_exceeded")


def parse_request(
    body: object, *, model_id: str, tokenizer: BPETokenizer, context: int
) -> ChatRequest:
    """Validate a decoded JSON request body against the API and the model's limits.

    Checks run in the API's order: the body's shape and every parameter's type and range
    first (400), then whether the model exists (404), then whether the prompt and the
    requested reply fit in ``context`` tokens (400, ``context_length_exceeded``).
    """
    if not isinstance(body, dict):
        raise APIError(
            400,
            f"Invalid request body: expected a JSON object, but got {_type_name(body)} instead.",
            code="invalid_type",
        )
    for key, value in body.items():
        if key in SUPPORTED or key in IGNORED:
            continue
        if key in PENALTIES:
            if value not in (None, 0):
                raise APIError(
                    400,
                    f"Unsupported value: '{key}' must be 0 on this server "
                    "(the book's model has no penalties).",
                    param=key,
                    code="unsupported_value",
                )
        elif key in UNSUPPORTED:
            if value not in (None, False):
                raise APIError(
                    400,
                    f"Unsupported parameter: '{key}' is not supported by this "
                    "server (the book's tiny model cannot honour it).",
                    param=key,
                    code="unsupported_parameter",
                )
        else:
            raise APIError(
                400,
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    question = _last_question(body.get("messages"))
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    n = _integer(body, "n", 1, MAX_N) or 1
    seed = _integer(body, "seed", *_SEED_RANGE)
    max_tokens = _integer(body, "max_tokens", 1)
    max_completion = _integer(body, "max_completion_tokens", 1)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise APIError(
            400,
            "Invalid request: set only one of 'max_tokens' and 'max_completion_tokens'.",
            param="max_tokens",
            code="invalid_value",
        )
    limit = max_completion if max_completion is not None else max_tokens
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid_type("stream_options", "an object", options)
        if not stream:
            raise APIError(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _invalid_type("stream_options.include_usage", "a boolean", include_usage)
    if model != model_id:
        raise APIError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    # A token is at most a few bytes long, so text far longer than the context is refused
    # before tokenizing it: no request, however long, keeps the server busy.
    longest = max(len(tok) for tok in tokenizer.vocab)
    if len(question.encode("utf-8")) > context * longest:
        raise _context_error(context, len(question.encode("utf-8")) // longest, None, True)
    prompt_ids = encode_prompt(tokenizer, question)
    room = context - len(prompt_ids)
    if room < 1:
        raise _context_error(context, len(prompt_ids), None)
    if limit is not None and limit > room:
        raise _context_error(context, len(prompt_ids), limit)
    return ChatRequest(
        model,
        question,
        prompt_ids,
        room if limit is None else limit,
        temperature,
        top_p,
        n,
        seed,
        bool(stream),
        include_usage,
    )


# --- generation ---------------------------------------------------------------------------


def generate_tokens(
    model: GPT,
    prompt_ids: Sequence[int],
    n: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop_ids: frozenset[int] = frozenset(),
) -> Iterator[list[int]]:
    """Yield the next token of each of ``n`` replies, one list of ``n`` ids per step.

    This is the loop of :meth:`GPT.generate` with a KV cache, written as a generator so a
    server can send each token as soon as it exists. Rows are sampled together as one batch
    so that the tokens equal ``model.generate(prompt.repeat(n, 1), ...)``'s draw for draw;
    generation stops early once every row has produced a token in ``stop_ids``.
    ``temperature=0`` or ``top_p=0`` decodes greedily. Each step runs under its own
    ``torch.no_grad()``, because a web server may resume the generator on another thread and
    PyTorch's grad mode is per thread.
    """
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must be at least 1")
    if len(prompt_ids) + max_new_tokens > model.config.context:
        raise ValueError(
            f"{len(prompt_ids)} prompt tokens + max_new_tokens={max_new_tokens} "
            f"exceed the model's context={model.config.context}"
        )
    greedy = temperature == 0 or top_p == 0
    device = next(model.parameters()).device
    with torch.no_grad():
        cache = KVCache(model.config, n, device, model.transformer.wte.weight.dtype)
        step_input = torch.tensor([list(prompt_ids)] * n, device=device)  # (n, T)
    done = [False] * n
    for _ in range(max_new_tokens):
        with torch.no_grad():
            hidden = model._hidden(step_input, cache)  # (n, T or 1, C)
            logits = model.lm_head(hidden[:, -1, :])  # (n, V)
            step_input = sample_next_token(
                logits,
                0.0 if greedy else temperature,
                None,
                None if top_p >= 1 else top_p,
                generator,
            )  # (n, 1)
        tokens = step_input[:, 0].tolist()
        yield tokens
        done = [d or t in stop_ids for d, t in zip(done, tokens, strict=True)]
        if all(done):
            return


class ReplyText:
    """The visible text of one reply as its tokens arrive, and the delta each token adds.

    The reply ends before the first special token; its leading whitespace (the chat
    template puts a space before every answer) is dropped, as chat APIs do. A token that
    ends inside a multi-byte character is held back until the character is complete.
    """

    def __init__(self, tok: BPETokenizer) -> None:
        self.tok, self.ids, self.sent = tok, [], ""

    def add(self, token: int) -> str:
        """Append ``token`` (a content token) and return the new text to send, maybe ''."""
        self.ids.append(token)
        text = self.tok.decode(self.ids).lstrip()
        if text.endswith("\ufffd"):  # incomplete UTF-8: wait for the next token
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


# --- the HTTP application -----------------------------------------------------------------


def _chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _sse(obj: object) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(
    model: GPT,
    tokenizer: BPETokenizer,
    model_id: str = MODEL_ID,
    *,
    seed: int | None = None,
    owned_by: str = "mlupdates",
) -> FastAPI:
    """A FastAPI application serving ``model`` under the name ``model_id``.

    Routes: ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /v1/models/{id}``.
    Requests without a ``seed`` draw their sampling seed from a generator seeded with
    ``seed`` (default: stream 0 of the running chapter's seed), so a fresh server answers the same sequence of requests the same way; a
    request with a ``seed`` gets the same reply every time.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id={model_id!r} must be a non-empty string")
    model.eval()
    context = model.config.context
    stop_ids = frozenset(tokenizer.special_tokens.values())
    created = int(time.time())
    seeds, seeds_lock = random.Random(resolve_seed(seed, 0)), threading.Lock()
    app = FastAPI(
        title="mlupdates Chat Completions server", docs_url=None, redoc_url=None, openapi_url=None
    )

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = f"{err.detail} ({request.method} {request.url.path})"
        return error_response(APIError(err.status_code, message))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, err: Exception) -> JSONResponse:
        return error_response(
            APIError(
                500, "The server had an error while processing your request.", type="server_error"
            )
        )

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model_card()

    def sampler(req: ChatRequest) -> torch.Generator:
        if req.seed is None:
            with seeds_lock:
                draw = seeds.getrandbits(63)
        else:
            draw = req.seed
        return torch.Generator(device=next(model.parameters()).device).manual_seed(draw)

    def steps(req: ChatRequest) -> Iterator[list[int]]:
        return generate_tokens(
            model,
            req.prompt_ids,
            req.n,
            req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            generator=sampler(req),
            stop_ids=stop_ids,
        )

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def complete(req: ChatRequest) -> dict[str, Any]:
        replies = [ReplyText(tokenizer) for _ in range(req.n)]
        finish: list[str | None] = [None] * req.n
        counts = [0] * req.n
        for tokens in steps(req):
            for i, token in enumerate(tokens):
                if finish[i] is not None:
                    continue
                counts[i] += 1
                if token in stop_ids:
                    finish[i] = "stop"
                else:
                    replies[i].add(token)
                    if counts[i] == req.max_tokens:
                        finish[i] = "length"
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.sent, "refusal": None},
                "logprobs": None,
                "finish_reason": finish[i] or "length",
            }
            for i, r in enumerate(replies)
        ]
        return {
            "id": _chat_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage(len(req.prompt_ids), sum(counts)),
        }

    def stream(req: ChatRequest) -> Iterator[str]:
        head = {
            "id": _chat_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": None,
        }

        def chunk(index: int, delta: dict, finish: str | None = None) -> str:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**head, "choices": [choice]})

        for i in range(req.n):
            yield chunk(i, {"role": "assistant", "content": "", "refusal": None})
        replies = [ReplyText(tokenizer) for _ in range(req.n)]
        finished = [False] * req.n
        counts = [0] * req.n
        try:
            for tokens in steps(req):
                for i, token in enumerate(tokens):
                    if finished[i]:
                        continue
                    counts[i] += 1
                    if token in stop_ids:
                        finished[i] = True
                        yield chunk(i, {}, "stop")
                        continue
                    delta = replies[i].add(token)
                    if delta:
                        yield chunk(i, {"content": delta})
                    if counts[i] == req.max_tokens:
                        finished[i] = True
                        yield chunk(i, {}, "length")
            for i in range(req.n):
                if not finished[i]:  # cannot happen: every row ends by stop or length
                    yield chunk(i, {}, "length")
            if req.include_usage:
                yield _sse(
                    {**head, "choices": [], "usage": usage(len(req.prompt_ids), sum(counts))}
                )
        except Exception:  # headers are sent: report in the stream, the way the API does
            log.exception("generation failed during streaming")
            yield _sse(
                APIError(
                    500, "The server had an error while generating the reply.", type="server_error"
                ).body()
            )
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise APIError(413, f"Request body too large: at most {MAX_BODY_BYTES} bytes.")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"Request body too large: at most {MAX_BODY_BYTES} bytes.")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise APIError(
                400,
                "We could not parse the JSON body of your request. The API expects a "
                "JSON payload, but what was sent was not valid JSON.",
            ) from None
        req = parse_request(body, model_id=model_id, tokenizer=tokenizer, context=context)
        if req.stream:
            return StreamingResponse(
                stream(req), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            return JSONResponse(await run_in_threadpool(complete, req))
        except Exception:  # the model failed: answer with the API's 500, keep serving
            log.exception("generation failed")
            raise APIError(
                500, "The server had an error while processing your request.", type="server_error"
            ) from None

    return app


# --- running it -----------------------------------------------------------------------------


class ServerThread:
    """Serve an ASGI app with uvicorn in a daemon thread, on a free port of ``host``.

    For tests and notebooks, which need a real HTTP server but cannot block on one. The
    socket is bound before the thread starts (port 0 lets the system pick a free port), so
    :attr:`port` is known at once; :meth:`start` returns when uvicorn accepts connections.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port={port} must be in [0, 65535] (0: any free port)")
        if not startup_timeout > 0:
            raise ValueError(f"startup_timeout={startup_timeout} must be positive")
        self.app, self.host, self.startup_timeout = app, host, startup_timeout
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port: int = self.socket.getsockname()[1]
        self.server: Any = None
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The URL to give the ``openai`` client as ``base_url``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ServerThread:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.socket]},
            name=f"uvicorn:{self.port}",
            daemon=True,
        )
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit, wait for the thread, and close the socket."""
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mlupdates.serve``: serve chapter 2's assistant until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m mlupdates.serve",
        description="Serve the book's tiny assistant through OpenAI's Chat Completions API.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--model", default=MODEL_ID, help="name clients must send as 'model' (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for unseeded requests")
    args = parser.parse_args(argv)
    if not 0 < args.port <= 65535:
        parser.error(f"--port={args.port} must be in [1, 65535]")

    import uvicorn

    from mlupdates import recipes
    from mlupdates.runtime import setup

    setup(notebook="serve", seed=args.seed)
    print("building the assistant (about 17 s the first time, then cached) ...", flush=True)
    app = create_app(
        recipes.assistant_model(), recipes.corpus().tokenizer, args.model, seed=args.seed
    )
    print(f"serving '{args.model}' at http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
