"""``hotswap serve``: the HTTP query service (FastAPI + uvicorn; the ``serve`` extra).

POST /query (vectors embedded by a version or alias, or texts for a version registered with a
pretrained text encoder; k, merge policy), GET /status, GET /healthz,
OpenAPI docs at /docs. Binds to 127.0.0.1 unless told otherwise; optional bearer token; request
bodies over a size limit are refused before they are read; domain errors become 4xx with a message.

/query takes JSON, or an ``application/octet-stream`` body of little-endian float32 rows with
``version``, ``dim``, ``k`` and ``policy`` in the query string (no float parsing at all). Query
vectors must be finite numbers: strings, booleans, NaN and infinities are refused with 422.
Per-request overhead is measured by bench/http_load.py (docs/results/http.md).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from kernels.optional import require

require("fastapi", "serve")

import numpy as np  # noqa: E402
import pydantic_core  # noqa: E402
import torch  # noqa: E402
from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from pydantic import BaseModel, Field, ValidationError  # noqa: E402

from index import versions  # noqa: E402
from index.context import Context  # noqa: E402
from index.serving import SearcherPool  # noqa: E402
from index.status import summary  # noqa: E402
from kernels.errors import HotswapError  # noqa: E402

MAX_BODY_BYTES = 8 * 1024 * 1024  # 8 MiB: about 2,700 queries of 768 floats as JSON
MAX_QUERIES = 4096
STATUS_BY_EXIT_CODE = {2: 422, 3: 404, 4: 409, 5: 503}
BINARY, JSON = "application/octet-stream", "application/json"

# strict: a string or a bool is not a number; JSON's NaN/Infinity and overflowing literals are refused.
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class QueryRequest(BaseModel):
    version: str = Field(description="Model version (or serving alias) of the queries.")
    vectors: list[list[Finite]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUERIES,
        description="Query vectors (N, d), finite numbers.",
    )
    texts: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Query texts, embedded by the version's pretrained encoder.",
    )
    k: int = Field(default=10, ge=1, le=1000)
    policy: str = Field(default="score", description="Merge policy: score, rrf, native_first.")


class BinaryQuery(BaseModel):
    """The query-string parameters of an ``application/octet-stream`` body."""

    version: str
    dim: int = Field(ge=1, description="Width d of each float32 row of the body.")
    k: int = Field(default=10, ge=1, le=1000)
    policy: str = "score"


class Hit(BaseModel):
    id: str
    score: float
    space: str


class QueryResponse(BaseModel):
    results: list[list[Hit]]


def invalid(error: ValidationError, where: str) -> HTTPException:
    """422 in FastAPI's shape, without echoing the input (it may be megabytes, or NaN)."""
    detail = [
        {"type": e["type"], "loc": [where, *e["loc"]], "msg": e["msg"]}
        for e in error.errors(include_url=False)
    ]
    return HTTPException(422, detail)


def parse_json(raw: bytes) -> tuple[QueryRequest, np.ndarray | None]:
    """A JSON body -> the request and its (N, d) float32 vectors (None for texts)."""
    try:
        body = QueryRequest.model_validate_json(raw)  # pydantic-core parses the bytes itself
    except ValidationError as e:
        raise invalid(e, "body") from e
    if (body.vectors is None) == (body.texts is None):
        raise HTTPException(422, "give exactly one of 'vectors' or 'texts'")
    if body.vectors is None:
        return body, None
    if len({len(v) for v in body.vectors}) != 1:
        raise HTTPException(422, "all query vectors must have the same width")
    return body, finite32(np.asarray(body.vectors, dtype=np.float32))


def parse_binary(raw: bytes, params: dict[str, str]) -> tuple[BinaryQuery, np.ndarray]:
    """Little-endian float32 rows of width ``dim`` -> the request and its (N, dim) vectors."""
    try:
        query = BinaryQuery.model_validate(params)
    except ValidationError as e:
        raise invalid(e, "query") from e
    row = 4 * query.dim
    if not raw or len(raw) % row:
        raise HTTPException(
            422,
            f"body of {len(raw)} bytes is not a whole number of float32 rows of width {query.dim}",
        )
    if len(raw) // row > MAX_QUERIES:
        raise HTTPException(422, f"{len(raw) // row} query rows, at most {MAX_QUERIES}")
    # a copy: torch wants a writable array, and the body's bytes are read-only
    return query, finite32(np.frombuffer(raw, dtype="<f4").reshape(-1, query.dim).copy())


def finite32(vectors: np.ndarray) -> np.ndarray:
    # float64 values beyond float32's range become inf here, after pydantic's finiteness check.
    if not np.isfinite(vectors).all():
        raise HTTPException(422, "query vectors must be finite (no NaN or infinity)")
    return vectors


class BodyLimit:
    """Refuses a body whose declared length is over ``max_body`` with 413, before reading it.

    A plain ASGI middleware: ``@app.middleware("http")`` wraps every request in an extra task and
    response stream. With it gone and ``authorize`` async, the HTTP overhead per query fell from
    2.76 / 3.18 ms to 2.01 / 2.42 ms at p50 (docs/results/http.md, A/B on a quiet machine).
    """

    def __init__(self, app: Any, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                detail = {"detail": f"request body over {self.max_body} bytes"}
                await JSONResponse(detail, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TextEncoders:
    """Each pretrained version's text encoder, loaded (and its weights checked) on first use."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}

    def encode(self, version: str, texts: list[str]) -> torch.Tensor:
        """(N,) texts -> (N, dim) unit rows in ``version``'s space."""
        with self._lock:
            if version not in self._loaded:
                with self.ctx.transaction() as session:
                    record = versions.get_version(session, version)
                    self._loaded[version] = versions.load_pretrained_version(record)
            encoder = self._loaded[version]
        return encoder.encode(texts)


def query_openapi() -> dict[str, Any]:
    """The /query body as OpenAPI: the endpoint reads its raw body, so FastAPI cannot infer it."""
    binary = BinaryQuery.model_json_schema()
    parameters = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": f"{BINARY} bodies only (required there: {', '.join(binary['required'])})."
            + (f" {schema['description']}" if "description" in schema else ""),
        }
        for name, schema in binary["properties"].items()
    ]
    body = {
        "required": True,
        "description": f"JSON, or {BINARY}: N little-endian float32 rows of width `dim`, the "
        "other fields as query parameters (no JSON float parsing: the fast path for batches).",
        "content": {
            "application/json": {"schema": QueryRequest.model_json_schema()},
            BINARY: {"schema": {"type": "string", "format": "binary"}},
        },
    }
    return {"parameters": parameters, "requestBody": body}


def create_app(
    ctx: Context,
    *,
    token: str | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    pool = SearcherPool(ctx)
    encoders = TextEncoders(ctx)
    # The queries' own thread pool: loop.run_in_executor costs about a quarter of the CPU of
    # FastAPI's run_in_threadpool (anyio: limiter, cancel scope) per hop.
    workers = ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4), "hotswap-query")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        workers.shutdown(wait=True, cancel_futures=True)
        # The last seconds of query counts would otherwise die with the process, and the
        # access_frequency ordering would never see them.
        pool.flush()

    api = FastAPI(
        title="hotswap",
        summary="Mixed-version search over a migrating gallery.",
        lifespan=lifespan,
    )

    # async: a plain `def` dependency would cost every request a hop through the thread pool.
    async def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(
                401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
            )

    api.add_middleware(BodyLimit, max_body=max_body)

    @api.exception_handler(HotswapError)
    async def domain_error(request: Request, error: HotswapError) -> JSONResponse:
        status = STATUS_BY_EXIT_CODE.get(error.exit_code, 400)
        return JSONResponse({"detail": str(error)}, status_code=status)

    @api.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @api.get("/status", dependencies=[Depends(authorize)])
    def status() -> dict[str, Any]:
        return summary(ctx)

    def search(version: str, vectors: torch.Tensor, k: int, policy: str) -> bytes:
        """(N, d) queries -> the response body, N lists of hits."""
        searcher = pool.get(version)
        result = searcher.search(vectors, k=k, policy=policy)
        names = searcher.external_ids(result.ids)
        # Built as plain JSON: the hits are correct by construction, and validating them again
        # through the response model costs more than the search on small galleries. The
        # response_model below still documents the shape in the OpenAPI schema.
        hits = [
            [
                {"id": n, "score": float(s), "space": result.space_names[sp]}
                for n, s, sp in zip(row, result.scores[q], result.spaces[q], strict=True)
                if n is not None
            ]
            for q, row in enumerate(names)
        ]
        return pydantic_core.to_json({"results": hits})

    def answer(kind: str, raw: bytes, query: dict[str, str]) -> bytes:
        """Parse, embed texts if given, search, render: the CPU work of POST /query."""
        if kind == BINARY:
            params, vectors = parse_binary(raw, query)
            return search(params.version, torch.from_numpy(vectors), params.k, params.policy)
        if kind != JSON:
            raise HTTPException(415, f"content-type {kind!r}: send {JSON} or {BINARY}")
        body, found = parse_json(raw)
        if found is not None:
            return search(body.version, torch.from_numpy(found), body.k, body.policy)
        assert body.texts is not None  # parse_json checked: exactly one of the two
        queries = encoders.encode(pool.resolve(body.version), body.texts)
        return search(body.version, queries, body.k, body.policy)

    @api.post(
        "/query",
        response_model=QueryResponse,
        dependencies=[Depends(authorize)],
        openapi_extra=query_openapi(),
    )
    async def query(request: Request) -> Response:
        # async, to read the raw body (no stdlib JSON pass, no pydantic pass over Python
        # lists); all the CPU work then goes to the thread pool in one hop: searching on the
        # event loop measured slower under load and blocks concurrent clients
        # (docs/results/http.md).
        kind = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        raw = await request.body()
        params = dict(request.query_params)
        payload = await asyncio.get_running_loop().run_in_executor(
            workers, answer, kind, raw, params
        )
        return Response(payload, media_type=JSON)

    return api


def run(api: FastAPI, host: str, port: int) -> None:
    """Serve ``api`` with uvicorn: httptools and uvloop where installed (the ``serve`` extra
    brings them), no access log (it formats a line per request even when not shown)."""
    uvicorn = require("uvicorn", "serve")
    uvicorn.run(api, host=host, port=port, log_level="warning", access_log=False)
