"""The HTTP API against a real `avatarpipe serve`: every endpoint, every auth path, a real upload
through the pipeline to a ready avatar, share links, metrics, CORS, and erasure with its certificate."""

from __future__ import annotations

import io
import json
import subprocess
import time

import httpx
import pytest
from PIL import Image

from tests.service.conftest import ALLOWED_ORIGIN, CLI, Service, wait_until_final

pytestmark = pytest.mark.slow


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _post_photo(svc: Service, role: str, data: bytes, name: str = "photo.png", **form: str) -> httpx.Response:
    with svc.client(role) as client:
        return client.post("/v1/uploads", files={"photo": (name, data, "image/png")}, data=form)


def _stored(svc: Service) -> tuple[int, int]:
    """(raw objects in the object store, upload documents)."""
    from storage.metadata_store import open_metadata_store

    objects = (
        [p for p in (svc.home / "objects").rglob("*") if p.is_file()]
        if (svc.home / "objects").exists()
        else []
    )
    with open_metadata_store(None, svc.home / "metadata") as metadata:
        return len([p for p in objects if "/raw/" in p.as_posix()]), len(metadata.list_uploads())


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in response.text and "/objects/" not in response.text
    return body["error"]


@pytest.fixture(scope="module")
def ready(service, standing_photo) -> dict:
    response = _post_photo(service, "uploader", standing_photo.read_bytes(), "standing.png", height_cm="178")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "pending" and accepted["upload_id"].startswith("u_")
    final = wait_until_final(service, accepted["upload_id"])
    assert final["status"] == "ready", final
    return final


def test_openapi_document_describes_the_versioned_api(service):
    spec = httpx.get(service.url + "/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/uploads", "/v1/uploads/{upload_id}", "/v1/uploads/{upload_id}/events", "/v1/uploads/{upload_id}/avatar.glb",
            "/v1/uploads/{upload_id}/preview.png", "/v1/uploads/{upload_id}/share", "/v1/subjects/{subject_id}/erasure",
            "/v1/erasures/{erasure_id}", "/v1/subjects/{subject_id}/audit", "/healthz", "/metrics"} <= paths  # fmt: skip
    assert spec["info"]["version"]


def test_a_ready_upload_answers_its_steps_checks_and_artifacts(service, ready):
    assert [s["status"] for s in ready["steps"].values()] == ["done"] * 5
    assert all(s["seconds"] is not None for s in ready["steps"].values())
    assert ready["checks"] and all(c["passed"] for c in ready["checks"].values())
    assert ready["error"] is None and ready["links"]["avatar"].endswith("/avatar.glb")
    with service.client("uploader") as client:
        status = client.get(f"/v1/uploads/{ready['upload_id']}").json()
        glb = client.get(ready["links"]["avatar"])
        preview = client.get(ready["links"]["preview"])
        vrm = client.get(ready["links"]["vrm"])
    assert status["status"] == "ready"
    assert (
        glb.status_code == 200
        and glb.content[:4] == b"glTF"
        and glb.headers["content-type"] == "model/gltf-binary"
    )
    from storage.metadata_store import open_metadata_store

    with open_metadata_store(None, service.home / "metadata") as metadata:
        doc = metadata.current_artifact(ready["upload_id"], "rigged_glb")
        upload = metadata.get_upload(ready["upload_id"])
    assert (service.home / "objects" / doc["key"]).read_bytes() == glb.content
    assert upload["body_hints"] == {"height_cm": 178.0}  # the form's hint reached the upload
    assert preview.status_code == 200 and preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    json_len = int.from_bytes(vrm.content[12:16], "little")
    assert (
        vrm.content[:4] == b"glTF"
        and "VRMC_vrm" in json.loads(vrm.content[20 : 20 + json_len])["extensionsUsed"]
    )


def test_every_auth_path(service, ready):
    upload = f"/v1/uploads/{ready['upload_id']}"
    assert _error(httpx.get(service.url + upload))["code"] == "UNAUTHENTICATED"
    bad = httpx.get(service.url + upload, headers={"Authorization": "Bearer ak_000000000000_forged"})
    assert bad.status_code == 401 and _error(bad)["code"] == "UNAUTHENTICATED"
    with service.client("uploader2") as other:  # another uploader's upload does not exist for it
        for path in (upload, upload + "/avatar.glb", upload + "/events", upload + "/preview.png"):
            answer = other.get(path)
            assert answer.status_code == 404 and _error(answer)["code"] == "NOT_FOUND", path
        assert other.post(upload + "/share", json={"minutes": 5}).status_code == 404
        assert other.post(upload + "/erasure-request").status_code == 404
    with service.client("uploader") as uploader:
        for call in (lambda: uploader.post(f"/v1/subjects/{ready['subject_id']}/erasure"),
                     lambda: uploader.get(f"/v1/subjects/{ready['subject_id']}/audit"),
                     lambda: uploader.get("/v1/erasures/abc")):  # fmt: skip
            answer = call()
            assert answer.status_code == 403 and _error(answer)["code"] == "FORBIDDEN"
    with service.client("compliance") as compliance:
        refused = compliance.post("/v1/uploads", files={"photo": ("p.png", b"x", "image/png")})
        assert refused.status_code == 403 and _error(refused)["code"] == "FORBIDDEN"
        assert compliance.get(upload).status_code == 200
        audit = compliance.get(f"/v1/subjects/{ready['subject_id']}/audit")
        assert audit.status_code == 200 and audit.json()["uploads"][0]["upload_id"] == ready["upload_id"]
    # a revoked key stops working at once
    issued = json.loads(subprocess.run([str(CLI), "keys", "create", "--role", "uploader", "--json"], env=service.env,
                                       check=True, capture_output=True, text=True).stdout)  # fmt: skip
    assert (
        httpx.get(
            service.url + "/v1/uploads/u_none", headers={"Authorization": f"Bearer {issued['key']}"}
        ).status_code
        == 404
    )
    subprocess.run(
        [str(CLI), "keys", "revoke", issued["key_id"]], env=service.env, check=True, capture_output=True
    )
    revoked = httpx.get(
        service.url + "/v1/uploads/u_none", headers={"Authorization": f"Bearer {issued['key']}"}
    )
    assert revoked.status_code == 401


def test_bad_uploads_are_refused_before_anything_is_stored(service, ready):
    before = _stored(service)
    cases = {
        "NOT_AN_IMAGE": (b"not an image at all", {}),
        "EMPTY_FILE": (b"", {}),
        "IMAGE_TOO_SMALL": (_png(Image.new("RGB", (48, 48))), {}),
        "DECOMPRESSION_BOMB": (_png(Image.new("1", (30000, 30000))), {}),
        "INVALID_HINT": (_png(Image.new("RGB", (256, 256))), {"height_cm": "900"}),
        "FILE_TOO_LARGE": (b"\x89PNG" + bytes(26 * 1024 * 1024), {}),
    }
    for code, (data, form) in cases.items():
        answer = _post_photo(service, "uploader", data, **form)
        assert 400 <= answer.status_code < 500 and _error(answer)["code"] == code, (code, answer.text)
    bad_subject = _post_photo(service, "uploader", _png(Image.new("RGB", (256, 256))), subject_id="../etc")
    assert bad_subject.status_code == 422 and _error(bad_subject)["code"] == "INVALID_REQUEST"
    assert _stored(service) == before


def test_share_links_are_signed_expiring_and_read_only(service, ready):
    from service.secrets_file import service_secret
    from service.shares import sign_share

    with service.client("uploader") as client:
        link = client.post(f"/v1/uploads/{ready['upload_id']}/share", json={"minutes": 30}).json()
        too_long = client.post(f"/v1/uploads/{ready['upload_id']}/share", json={"minutes": 0})
    assert too_long.status_code == 422
    assert link["url"].startswith("/?share=")
    shared = httpx.get(service.url + link["avatar_url"])  # no key needed
    assert shared.status_code == 200 and shared.content[:4] == b"glTF"
    tampered = httpx.get(service.url + link["avatar_url"].replace("/avatar.glb", "x/avatar.glb"))
    assert tampered.status_code == 403 and _error(tampered)["code"] == "SHARE_LINK_INVALID"
    secret = service_secret(service.home, None)
    expired, _ = sign_share(secret, ready["upload_id"], 5, now=time.time() - 3600)
    answer = httpx.get(f"{service.url}/v1/shared/{expired}/avatar.glb")
    assert answer.status_code == 403 and _error(answer)["code"] == "SHARE_LINK_EXPIRED"


def test_health_metrics_cors_and_unknown_routes(service, ready):
    assert httpx.get(service.url + "/healthz").json() == {"status": "ok"}
    metrics = httpx.get(service.url + "/metrics").text
    assert 'avatarpipe_uploads{status="ready"} 1.0' in metrics
    assert 'avatarpipe_step_seconds_bucket{le="+Inf",step="smplx_params"} 1.0' in metrics
    assert "avatarpipe_queue_depth 0.0" in metrics and "avatarpipe_http_requests_total" in metrics
    preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    allowed = httpx.options(service.url + "/v1/uploads", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    other = httpx.options(service.url + "/v1/uploads", headers={**preflight, "Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers
    assert _error(httpx.get(service.url + "/v1/nothing-here"))["code"] == "NOT_FOUND"
    assert _error(httpx.delete(service.url + "/v1/uploads"))["code"] == "METHOD_NOT_ALLOWED"


def test_erasure_by_compliance_and_by_the_uploader(service, ready):
    # the uploader's own "delete my data" on a second subject (a photo with no person fails fast)
    landscape = _png(Image.new("RGB", (640, 480), (90, 140, 200)))
    own = _post_photo(service, "uploader2", landscape, "sky.png").json()
    assert wait_until_final(service, own["upload_id"], role="uploader2")["error"]["code"] == "NO_PERSON"
    with service.client("uploader2") as client:
        mine = client.post(f"/v1/uploads/{own['upload_id']}/erasure-request")
    assert mine.status_code == 202
    with service.client("uploader") as client:
        link = client.post(f"/v1/uploads/{ready['upload_id']}/share", json={"minutes": 30}).json()
    with service.client("compliance") as compliance:
        started = compliance.post(f"/v1/subjects/{ready['subject_id']}/erasure")
        assert started.status_code == 202
        certificates = {}
        for erasure in (started.json(), mine.json()):
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                doc = compliance.get(f"/v1/erasures/{erasure['erasure_id']}").json()
                if doc.get("status", "").startswith("completed"):
                    break
                time.sleep(1)
            certificates[erasure["erasure_id"]] = doc
        assert all(c["verification"]["clean"] for c in certificates.values()), certificates
        assert compliance.get(f"/v1/uploads/{ready['upload_id']}").status_code == 404
        assert compliance.get(f"/v1/subjects/{ready['subject_id']}/audit").json()["status"] == "erased"
    with service.client("uploader") as client:
        assert client.get(f"/v1/uploads/{ready['upload_id']}/avatar.glb").status_code == 404
    revoked = httpx.get(service.url + link["avatar_url"])  # erasure revokes the share links
    assert revoked.status_code == 403 and _error(revoked)["code"] == "SHARE_LINK_EXPIRED"
