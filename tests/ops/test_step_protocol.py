"""The step protocol's plumbing, over a real local object store: how a request's inputs
become the bytes a step's `run` sees, and how a request crosses to a worker."""

import json

import pytest

from models.errors import ErrorCode, PipelineError
from ops.steps import FIT, MESH_METRICS, OFFSETS, STEPS, TEXTURE, StepRequest, input_source, load_inputs
from storage.object_store import LocalObjectStore


def _request(inputs: dict[str, str], metrics: dict[str, dict]) -> StepRequest:
    return StepRequest(
        step="rigged_glb", upload_id="u_1", subject_id="s_1", inputs=inputs, params={},
        object_store={"kind": "local", "root": "/unused"}, metrics=metrics,
    )  # fmt: skip


def test_input_names_say_where_an_input_comes_from():
    assert input_source("keypoints") == ("keypoints", None, False)
    assert input_source("keypoints:mask") == ("keypoints", "mask", False)
    assert input_source("mesh#metrics") == ("mesh", None, True)
    assert input_source("upload:raw") == ("upload", "raw", False)


def test_inputs_are_objects_metrics_or_an_optional_absence(tmp_path):
    store = LocalObjectStore(tmp_path)
    texture = store.put_bytes("subjects/s_1/u_1/mesh/00000000000000aa.png", b"png bytes").key
    fit = store.put_bytes("subjects/s_1/u_1/smplx_params/00000000000000bb.json", b"{}").key
    garment = {"garment": "skirt", "garment_hem_fraction": 0.4}
    spec = STEPS["rigged_glb"]

    # a mesh made before clothing offsets existed: the optional input is simply absent
    inputs = load_inputs(spec, _request({TEXTURE: texture, FIT: fit}, {"mesh": garment}), store)
    assert inputs[TEXTURE] == b"png bytes" and inputs[FIT] == b"{}" and OFFSETS not in inputs
    assert json.loads(inputs[MESH_METRICS]) == garment

    with pytest.raises(PipelineError) as missing:  # a required input is never silently absent
        load_inputs(spec, _request({TEXTURE: texture}, {"mesh": garment}), store)
    assert missing.value.code == ErrorCode.INTERNAL_ERROR and FIT in missing.value.message
    with pytest.raises(PipelineError):
        load_inputs(spec, _request({TEXTURE: texture, FIT: fit}, {}), store)


def test_a_request_crosses_to_the_worker_whole():
    request = _request({TEXTURE: "k1", FIT: "k2"}, {"mesh": {"garment": "dress"}})
    assert StepRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    older = request.to_dict()
    del older["metrics"]  # a request from an orchestrator that predates "#metrics" inputs
    assert StepRequest.from_dict(older).metrics == {}
