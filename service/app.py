"""The avatar service: a versioned JSON API and the web app, over the application layer.

Every upload it takes goes the way every other upload goes: stripped of identifying metadata
and stored under the subject's prefix, registered as a Dagster partition, run through the same
asset job (a real run recorded in the instance), judged by the same quality gates, recorded in
the metadata store. Errors are always `{"error": {"code", "message"}}` with the CLI's codes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import ErrorCode, PipelineError
from orchestration.settings import Settings, prepare_environment
from service import keys as api_keys
from service import shares
from service.dispatch import Dispatcher
from service.secrets_file import service_secret
from service.views import upload_view

API_VERSION = "1.0.0"
WEB_DIST = Path(__file__).resolve().parents[1] / "web" / "dist"
SSE_POLL_S = 0.5
SSE_MAX_S = 30 * 60
SSE_KEEPALIVE_S = 15
STATUS_OF_CODE = {
    ErrorCode.EMPTY_FILE: 422, ErrorCode.NOT_AN_IMAGE: 415, ErrorCode.TRUNCATED_IMAGE: 422,
    ErrorCode.CORRUPT_IMAGE: 422, ErrorCode.FILE_TOO_LARGE: 413, ErrorCode.DECOMPRESSION_BOMB: 413,
    ErrorCode.IMAGE_TOO_SMALL: 422, ErrorCode.INVALID_HINT: 422, ErrorCode.STORE_UNAVAILABLE: 503,
}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def not_found(what: str = "upload") -> ApiError:
    """Also the answer for another key's upload: its existence is not revealed."""
    return ApiError(404, "NOT_FOUND", f"no such {what}")


@dataclass
class ServiceState:
    settings: Settings
    secret: bytes
    dispatcher: Dispatcher
    registry: CollectorRegistry
    requests: Counter
    step_seconds: Histogram

    @contextmanager
    def metadata(self) -> Iterator[Any]:
        from orchestration.app import metadata_store

        with metadata_store(self.settings) as store:
            yield store

    def object_store(self) -> Any:
        from orchestration.app import object_store

        return object_store(self.settings)

    def record_finished(self, upload_id: str, _exit_status: int) -> None:
        """Step latencies into the histogram once a run is over (from the ledger)."""
        with self.metadata() as metadata:
            for doc in metadata.artifacts_for_upload(upload_id):
                if doc.get("compute_seconds") is not None:
                    self.step_seconds.labels(step=doc["asset_key"]).observe(doc["compute_seconds"])


# -- request bodies ------------------------------------------------------------------------


class ShareRequest(BaseModel):
    minutes: int = Field(60, ge=1, le=shares.MAX_MINUTES, description="how long the link works")


class PresignRequest(BaseModel):
    filename: str = Field(
        ..., min_length=1, max_length=255, description="the photo's file name (its extension matters)"
    )
    subject_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    build: str | None = None
    height_cm: float | None = None
    age_group: str | None = None


class Accepted(BaseModel):
    upload_id: str
    subject_id: str
    status: str


# -- the application -----------------------------------------------------------------------


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    prepare_environment(settings)
    config = settings.app
    registry = CollectorRegistry()
    state = ServiceState(
        settings=settings,
        secret=service_secret(settings.home, config.service_secret),
        dispatcher=dispatcher or Dispatcher(config.service_dispatch, config.service_workers),
        registry=registry,
        requests=Counter("avatarpipe_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry),
        step_seconds=Histogram("avatarpipe_step_seconds", "pipeline step compute time of runs the service saw finish",
                               ["step"], buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128), registry=registry),
    )  # fmt: skip
    state.dispatcher.on_finished = state.record_finished
    Gauge("avatarpipe_queue_depth", "uploads handed to the service's workers and not finished",
          registry=registry).set_function(lambda: state.dispatcher.queue_depth)  # fmt: skip
    registry.register(_UploadsByStatus(state))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.dispatcher.shutdown(wait=False)

    app = FastAPI(title="avatarpipe", version=API_VERSION, lifespan=lifespan,
                  description="Upload a photo, follow its avatar's build, fetch, share and erase it.")  # fmt: skip
    app.state.service = state
    origins = [o.strip() for o in config.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)  # fmt: skip
    _install_error_handlers(app)
    _install_request_metrics(app, state)
    _install_routes(app, state)
    if WEB_DIST.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIST, html=True), name="web")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(PipelineError)
    async def pipeline_error(_request: Request, exc: PipelineError) -> JSONResponse:
        code = exc.code if isinstance(exc.code, ErrorCode) else ErrorCode(str(exc.code))
        return JSONResponse(error_body(code.value, exc.message), status_code=STATUS_OF_CODE.get(code, 422))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse(error_body("INVALID_REQUEST", problems or "invalid request"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHENTICATED", 403: "FORBIDDEN"}
        return JSONResponse(error_body(code.get(exc.status_code, f"HTTP_{exc.status_code}"), str(exc.detail)),
                            status_code=exc.status_code)  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        from storage.retry import StoreUnavailable

        if isinstance(exc, StoreUnavailable):
            return JSONResponse(
                error_body("STORE_UNAVAILABLE", "a store is unavailable; try again shortly"), 503
            )
        return JSONResponse(
            error_body("INTERNAL_ERROR", "unexpected error; the request was not completed"), 500
        )


def _install_request_metrics(app: FastAPI, state: ServiceState) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "static")
        state.requests.labels(request.method, path, str(response.status_code)).inc()
        return response


class _UploadsByStatus:
    """`avatarpipe_uploads{status}` read from the metadata store at each scrape."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("avatarpipe_uploads", "uploads by status", labels=["status"])
        counts: dict[str, int] = {}
        with self.state.metadata() as metadata:
            for upload in metadata.list_uploads():
                counts[upload.get("status", "unknown")] = counts.get(upload.get("status", "unknown"), 0) + 1
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        yield family

    def describe(self) -> list[Any]:
        return []


# -- authentication --------------------------------------------------------------------------


def _caller(state: ServiceState, authorization: str | None, x_api_key: str | None) -> api_keys.ApiKey:
    presented = x_api_key or ""
    if authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    if not presented:
        raise ApiError(401, "UNAUTHENTICATED", "an API key is required (Authorization: Bearer ak_…)")
    with state.metadata() as metadata:
        key = api_keys.authenticate(metadata, state.secret, presented)
    if key is None:
        raise ApiError(401, "UNAUTHENTICATED", "the API key is not valid (unknown or revoked)")
    return key


def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> api_keys.ApiKey:
    """The authenticated caller (`Authorization: Bearer ak_…` or `X-API-Key`)."""
    return _caller(request.app.state.service, authorization, x_api_key)


Caller = Annotated[api_keys.ApiKey, Depends(caller)]


def _require(key: api_keys.ApiKey, *roles: str) -> None:
    if not key.may(*roles):
        raise ApiError(403, "FORBIDDEN", f"this needs a key with the role {' or '.join(roles)}")


def _own_upload(metadata: Any, key: api_keys.ApiKey, upload_id: str) -> dict:
    """The upload if this key may see it: uploader keys only their own; compliance and admin all."""
    upload = metadata.get_upload(upload_id)
    if upload is None or upload.get("status") == "erased":
        raise not_found()
    if key.role == "uploader" and upload.get("created_by") != key.key_id:
        raise not_found()
    return upload


# -- routes ------------------------------------------------------------------------------------


def _install_routes(app: FastAPI, state: ServiceState) -> None:
    limits = _photo_limits(state.settings)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        with state.metadata() as metadata:
            metadata.get_upload("u_healthz")
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/limits", tags=["uploads"])
    def photo_limits() -> dict[str, int]:
        return {"max_upload_bytes": limits.max_file_bytes, "max_image_pixels": limits.max_pixels,
                "min_side_px": limits.min_side}  # fmt: skip

    @app.post("/v1/uploads", status_code=202, tags=["uploads"], response_model=Accepted)
    async def create_upload(
        key: Caller,
        request: Request,
        photo: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, GIF, TIFF)")],
        subject_id: Annotated[str | None, Form(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
        build: Annotated[str | None, Form()] = None,
        height_cm: Annotated[float | None, Form()] = None,
        age_group: Annotated[str | None, Form()] = None,
    ) -> Accepted:
        _require(key, "uploader", "admin")
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_file_bytes + 64 * 1024:
            raise ApiError(413, "FILE_TOO_LARGE", f"the upload is larger than {limits.max_file_bytes} bytes")
        data = await photo.read(limits.max_file_bytes + 1)
        return await asyncio.to_thread(_accept_upload, state, key, data, photo.filename or "photo", subject_id,
                                       {"build": build, "height_cm": height_cm, "age_group": age_group})  # fmt: skip

    @app.post("/v1/uploads:presign", tags=["uploads"])
    def presign_upload(key: Caller, body: PresignRequest) -> dict[str, Any]:
        """With S3: a presigned PUT (SSE-KMS enforced by its signed headers) for the browser to
        upload straight to the bucket; the upload runs when the object lands."""
        from orchestration.app import body_hints
        from orchestration.app import presign_upload as presign

        _require(key, "uploader", "admin")
        hints = body_hints(body.build, body.height_cm, body.age_group)
        with state.metadata() as metadata:
            _may_add_to_subject(metadata, key, body.subject_id)
        try:
            ticket = presign(state.settings, body.filename, body.subject_id, hints)
        except LookupError as exc:
            raise ApiError(409, "PRESIGN_UNAVAILABLE", str(exc)) from None
        with state.metadata() as metadata:
            metadata.set_upload_owner(ticket.upload_id, key.key_id)
        return {"upload_id": ticket.upload_id, "subject_id": ticket.subject_id, "status": "pending",
                "upload": {"method": "PUT", "url": ticket.url, "headers": ticket.headers,
                           "expires_in": ticket.expires_in}}  # fmt: skip

    @app.get("/v1/uploads/{upload_id}", tags=["uploads"])
    def get_upload(key: Caller, upload_id: str) -> dict[str, Any]:
        with state.metadata() as metadata:
            return upload_view(metadata, _own_upload(metadata, key, upload_id)).to_dict()

    @app.get("/v1/uploads/{upload_id}/events", tags=["uploads"], response_class=StreamingResponse)
    def upload_events(key: Caller, upload_id: str) -> StreamingResponse:
        with state.metadata() as metadata:
            _own_upload(metadata, key, upload_id)
        return StreamingResponse(_status_events(state, upload_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.get("/v1/uploads/{upload_id}/avatar.glb", tags=["avatars"], response_class=Response)
    def avatar_glb(key: Caller, upload_id: str) -> Response:
        return _artifact_response(state, key, upload_id, "rigged_glb", None)

    @app.get("/v1/uploads/{upload_id}/preview.png", tags=["avatars"], response_class=Response)
    def avatar_preview(key: Caller, upload_id: str) -> Response:
        return _artifact_response(state, key, upload_id, "rigged_glb", "preview")

    @app.get("/v1/uploads/{upload_id}/avatar.vrm", tags=["avatars"], response_class=Response)
    def avatar_vrm(key: Caller, upload_id: str) -> Response:
        with state.metadata() as metadata:
            _ready(_own_upload(metadata, key, upload_id))
        data = _export_vrm(state, upload_id)
        return Response(data, media_type="model/gltf-binary",
                        headers={"Content-Disposition": 'attachment; filename="avatar.vrm"'})  # fmt: skip

    @app.post("/v1/uploads/{upload_id}/share", tags=["avatars"])
    def share_upload(key: Caller, upload_id: str, body: ShareRequest | None = None) -> dict[str, Any]:
        with state.metadata() as metadata:
            _ready(_own_upload(metadata, key, upload_id))
        token, share = shares.sign_share(state.secret, upload_id, (body or ShareRequest()).minutes)
        return {"url": f"/?share={token}", "avatar_url": f"/v1/shared/{token}/avatar.glb",
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(share.expires_at))}  # fmt: skip

    @app.get("/v1/shared/{token}/avatar.glb", tags=["avatars"], response_class=Response)
    def shared_avatar(token: str) -> Response:
        try:
            share = shares.open_share(state.secret, token)
        except shares.ShareExpired:
            raise ApiError(403, "SHARE_LINK_EXPIRED", "this share link has expired") from None
        except shares.ShareInvalid:
            raise ApiError(403, "SHARE_LINK_INVALID", "this is not a valid share link") from None
        with state.metadata() as metadata:
            upload = metadata.get_upload(share.upload_id)
            if upload is None or upload.get("status") != "ready":  # erased: the link is revoked
                raise ApiError(403, "SHARE_LINK_EXPIRED", "this share link no longer works")
        return _artifact_bytes_or_redirect(state, share.upload_id, "rigged_glb", None)

    @app.post("/v1/uploads/{upload_id}/erasure-request", status_code=202, tags=["compliance"])
    def request_my_erasure(key: Caller, upload_id: str) -> dict[str, Any]:
        """The uploader's "delete my data": erases the upload's subject (every upload of it)."""
        _require(key, "uploader", "admin")
        with state.metadata() as metadata:
            subject_id = _own_upload(metadata, key, upload_id)["subject_id"]
            owners = {u.get("created_by") for u in metadata.list_uploads(subject_id)}
        if key.role == "uploader" and owners != {key.key_id}:
            raise ApiError(
                403, "FORBIDDEN", "this subject has uploads of another key; ask compliance to erase it"
            )
        return _start_erasure(state, subject_id, f"api-key:{key.key_id}")

    @app.post("/v1/subjects/{subject_id}/erasure", status_code=202, tags=["compliance"])
    def erase_subject(key: Caller, subject_id: str) -> dict[str, Any]:
        _require(key, "compliance", "admin")
        return _start_erasure(state, subject_id, f"api-key:{key.key_id}")

    @app.get("/v1/erasures/{erasure_id}", tags=["compliance"])
    def get_erasure(key: Caller, erasure_id: str) -> dict[str, Any]:
        from ops.erasure import certificate_view

        _require(key, "compliance", "admin")
        with state.metadata() as metadata:
            doc = metadata.get_erasure(erasure_id)
        if doc is None:
            raise not_found("erasure")
        return json.loads(json.dumps(certificate_view(doc), default=str))

    @app.get("/v1/subjects/{subject_id}/audit", tags=["compliance"])
    def subject_audit(key: Caller, subject_id: str) -> dict[str, Any]:
        from orchestration.app import subject_audit as audit

        _require(key, "compliance", "admin")
        answer = audit(state.settings, subject_id, operator=f"api-key:{key.key_id}")
        if answer["status"] == "unknown_subject":
            raise not_found("subject")
        return json.loads(json.dumps(answer, default=str))


def _photo_limits(settings: Settings) -> Any:
    from models.photo import PhotoLimits

    return PhotoLimits.with_overrides(settings.app.max_upload_bytes, settings.app.max_image_pixels)


def _may_add_to_subject(metadata: Any, key: api_keys.ApiKey, subject_id: str | None) -> None:
    """An uploader adds to a subject only if every upload of it is its own (else: not found)."""
    if subject_id is None or key.role != "uploader":
        return
    if any(u.get("created_by") != key.key_id for u in metadata.list_uploads(subject_id)):
        raise not_found("subject")


def _accept_upload(
    state: ServiceState,
    key: api_keys.ApiKey,
    data: bytes,
    filename: str,
    subject_id: str | None,
    raw_hints: dict,
) -> Accepted:
    """Refuse at the door what can be refused (size, pixels, not an image, bad hints), then ingest
    exactly as `avatarpipe ingest` does and hand the upload to the dispatcher."""
    from models.photo import check_upload
    from orchestration.app import body_hints, ingest_photo

    check_upload(data, _photo_limits(state.settings))
    hints = body_hints(**raw_hints)
    with state.metadata() as metadata:
        _may_add_to_subject(metadata, key, subject_id)
    ingested = ingest_photo(state.settings, data, filename, subject_id, hints=hints)
    with state.metadata() as metadata:
        metadata.set_upload_owner(ingested.upload_id, key.key_id)
    state.dispatcher.submit_upload(ingested.upload_id)
    return Accepted(upload_id=ingested.upload_id, subject_id=ingested.subject_id, status="pending")


def _ready(upload: dict) -> None:
    if upload.get("status") != "ready":
        raise ApiError(409, "UPLOAD_NOT_READY", f"the avatar is not ready (status {upload.get('status')})")


def _artifact_response(
    state: ServiceState, key: api_keys.ApiKey, upload_id: str, asset: str, extra: str | None
) -> Response:
    with state.metadata() as metadata:
        _ready(_own_upload(metadata, key, upload_id))
    return _artifact_bytes_or_redirect(state, upload_id, asset, extra)


def _artifact_bytes_or_redirect(
    state: ServiceState, upload_id: str, asset: str, extra: str | None
) -> Response:
    """Local store: the bytes. S3: a short-lived presigned GET by redirect."""
    with state.metadata() as metadata:
        doc = metadata.current_artifact(upload_id, asset)
    if doc is None:
        raise not_found("artifact")
    object_key = doc["key"] if extra is None else (doc.get("extra_files") or {}).get(extra)
    if object_key is None:
        raise not_found("artifact")
    store = state.object_store()
    media = "image/png" if object_key.endswith(".png") else "model/gltf-binary"
    path = store.local_path(object_key)
    if path is not None:
        name = "preview.png" if media == "image/png" else "avatar.glb"
        return FileResponse(
            path, media_type=media, filename=name, headers={"Cache-Control": "private, max-age=300"}
        )
    presign = getattr(store, "presigned_get", None) or getattr(
        getattr(store, "inner", None), "presigned_get", None
    )
    if presign is None:
        return Response(store.get_bytes(object_key), media_type=media)
    return RedirectResponse(presign(object_key).url, status_code=307)


def _export_vrm(state: ServiceState, upload_id: str) -> bytes:
    from models.export import ExportOptions, export_avatar
    from orchestration.app import load_ready_glb

    glb = load_ready_glb(state.settings, upload_id)
    return export_avatar(glb, ExportOptions(format="vrm"), vrm_meta={"name": f"avatar {upload_id}"}).data


def _start_erasure(state: ServiceState, subject_id: str, operator: str) -> dict[str, Any]:
    from orchestration.app import request_erasure

    outcome = request_erasure(state.settings, subject_id, operator)
    if outcome.status == "unknown_subject":
        raise not_found("subject")
    answer = outcome.answer
    state.dispatcher.submit_erasure(subject_id, operator)
    return {"erasure_id": answer["erasure_id"], "status": "requested",
            "links": {"certificate": f"/v1/erasures/{answer['erasure_id']}"}}  # fmt: skip


async def _status_events(state: ServiceState, upload_id: str) -> AsyncIterator[bytes]:
    """One `status` event whenever the upload's view changes, until it is final (or 30 min)."""
    last = None
    started = said_at = time.monotonic()
    while time.monotonic() - started < SSE_MAX_S:
        view = await asyncio.to_thread(_view_or_none, state, upload_id)
        if view is None:
            yield b'event: error\ndata: {"error": {"code": "NOT_FOUND", "message": "no such upload"}}\n\n'
            return
        body = json.dumps(view.to_dict(), default=str)
        if body != last:
            yield f"event: status\ndata: {body}\n\n".encode()
            last, said_at = body, time.monotonic()
        elif time.monotonic() - said_at > SSE_KEEPALIVE_S:  # proxies (CloudFront: 60 s) cut silent streams
            yield b": keep-alive\n\n"
            said_at = time.monotonic()
        if view.final:
            return
        await asyncio.sleep(SSE_POLL_S)


def _view_or_none(state: ServiceState, upload_id: str) -> Any:
    with state.metadata() as metadata:
        upload = metadata.get_upload(upload_id)
        return None if upload is None or upload.get("status") == "erased" else upload_view(metadata, upload)
