"""``hotswap serve``: the HTTP query service (FastAPI + uvicorn; the ``serve`` extra).

POST /query (vectors embedded by a version or alias, k, merge policy), GET /status, GET /healthz,
OpenAPI docs at /docs. Binds to 127.0.0.1 unless told otherwise; optional bearer token; request
bodies over a size limit are refused before they are read; domain errors become 4xx with a message.
"""

from __future__ import annotations

import hmac
from typing import Any

from kernels.optional import require

require("fastapi", "serve")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from index.context import Context  # noqa: E402
from index.serving import SearcherPool  # noqa: E402
from index.status import summary  # noqa: E402
from kernels.errors import HotswapError  # noqa: E402

MAX_BODY_BYTES = 8 * 1024 * 1024  # 8 MiB: about 2,700 queries of 768 floats as JSON
STATUS_BY_EXIT_CODE = {2: 422, 3: 404, 4: 409, 5: 503}


class QueryRequest(BaseModel):
    version: str = Field(description="Model version (or serving alias) that embedded the vectors.")
    vectors: list[list[float]] = Field(min_length=1, max_length=4096)
    k: int = Field(default=10, ge=1, le=1000)
    policy: str = Field(default="score", description="Merge policy: score, rrf, native_first.")


class Hit(BaseModel):
    id: str
    score: float
    space: str


class QueryResponse(BaseModel):
    results: list[list[Hit]]


def create_app(
    ctx: Context, *, token: str | None = None, max_body: int = MAX_BODY_BYTES
) -> FastAPI:
    pool = SearcherPool(ctx)
    api = FastAPI(title="hotswap", summary="Mixed-version search over a migrating gallery.")

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(
                401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
            )

    @api.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return JSONResponse({"detail": f"request body over {max_body} bytes"}, status_code=413)
        return await call_next(request)

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

    @api.post("/query", response_model=QueryResponse, dependencies=[Depends(authorize)])
    def query(body: QueryRequest) -> QueryResponse:
        searcher = pool.get(body.version)
        if len({len(v) for v in body.vectors}) != 1:
            raise HTTPException(422, "all query vectors must have the same width")
        vectors = torch.from_numpy(np.asarray(body.vectors, dtype=np.float32))
        result = searcher.search(vectors, k=body.k, policy=body.policy)
        names = searcher.external_ids(result.ids)
        return QueryResponse(
            results=[
                [
                    Hit(id=n, score=float(s), space=result.space_names[sp])
                    for n, s, sp in zip(row, result.scores[q], result.spaces[q], strict=True)
                    if n is not None
                ]
                for q, row in enumerate(names)
            ]
        )

    return api
