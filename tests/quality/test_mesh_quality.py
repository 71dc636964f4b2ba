"""`mesh` metrics (models/quality.py) and the mesh suite on hand-made broken meshes.

The broken meshes are variants of the real Anny body written as the real `mesh` artifact
(seam-split textured GLB), so the metrics run through the same loading path as the check."""

import numpy as np
import pytest

from models.quality import mesh_glb_metrics, mesh_metrics, mesh_topology

# A tetrahedron: the smallest closed, consistently wound (outward) triangle mesh.
TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def test_topology_of_a_tetrahedron() -> None:
    closed = mesh_topology(TETRA_V, TETRA_F)
    assert (closed.boundary_edge_count, closed.hole_count, closed.component_count) == (0, 0, 1)
    assert closed.inconsistent_winding_edge_count == 0 and closed.non_manifold_edge_count == 0

    opened = mesh_topology(TETRA_V, TETRA_F[:3])
    assert (opened.boundary_edge_count, opened.hole_count) == (3, 1)

    flipped = mesh_topology(TETRA_V, np.vstack([TETRA_F[:3], TETRA_F[3, ::-1]]))
    assert flipped.inconsistent_winding_edge_count == 3  # each edge of the flipped face

    two = mesh_topology(np.vstack([TETRA_V, TETRA_V + 5]), np.vstack([TETRA_F, TETRA_F + 4]))
    assert two.component_count == 2


def test_seam_duplicates_are_welded_not_holes(body, good_mesh_glb) -> None:
    m = mesh_glb_metrics(good_mesh_glb)
    assert m.vertex_count > m.welded_vertex_count == len(body.vertices)  # UV seams split on export
    assert m.boundary_edge_count == 0 and m.hole_count == 0


def test_good_mesh_metrics_and_suite(body, good_mesh_glb, failures) -> None:
    m = mesh_glb_metrics(good_mesh_glb, body.silhouette())
    assert m.face_count == len(body.faces)
    assert m.nonfinite_vertex_count == m.degenerate_face_count == m.duplicate_face_count == 0
    assert m.inconsistent_winding_edge_count == m.non_manifold_edge_count == 0
    assert m.component_count == 4  # Anny: body, mouth interior, two eyes
    assert 1.5 < m.height_m < 1.8 and m.max_edge_length_m < 0.1
    assert m.self_intersection_fraction < 0.01
    assert m.has_uv and 0.5 < m.uv_coverage < 0.8 and m.uv_out_of_range_fraction == 0
    assert (m.texture_width, m.texture_height) == (512, 512)
    assert m.silhouette_iou == pytest.approx(1.0, abs=0.01)  # the mask is this body's silhouette
    assert failures("mesh", m.row()) == {}


def test_hole_fails_no_holes(body, failures) -> None:
    torso = int(np.argmin(np.linalg.norm(body.vertices - (0.0, -0.1, body.vertices[:, 2].min()), axis=1)))
    ring = (body.faces == torso).any(axis=1)
    ring_vertices = np.unique(body.faces[ring])
    keep = ~np.isin(body.faces, ring_vertices).any(axis=1)  # a disk of two rings around it
    m = mesh_glb_metrics(body.glb(faces=body.faces[keep], face_uv_idx=body.face_uv_idx[keep]), body.silhouette())
    assert m.hole_count == 1 and m.boundary_edge_count > 0
    assert failures("mesh", m.row()) == {"no_holes": "ERROR", "closed_surface": "ERROR"}


def test_flipped_faces_fail_consistent_winding(body, failures) -> None:
    faces = body.faces.copy()
    flipped = np.arange(0, len(faces), 3000)  # far apart: no two flipped faces are neighbours
    faces[flipped] = faces[flipped, ::-1]
    uv_idx = body.face_uv_idx.copy()
    uv_idx[flipped] = uv_idx[flipped, ::-1]
    m = mesh_glb_metrics(body.glb(faces=faces, face_uv_idx=uv_idx), body.silhouette())
    assert m.inconsistent_winding_edge_count == 3 * len(flipped)
    assert failures("mesh", m.row()) == {"consistent_winding": "ERROR"}


def test_degenerate_faces_fail(body, failures) -> None:
    extra = body.faces[:5].copy()
    extra[:, 2] = extra[:, 1]  # a repeated corner: zero area
    faces = np.vstack([body.faces, extra])
    uv_idx = np.vstack([body.face_uv_idx, body.face_uv_idx[:5]])
    m = mesh_glb_metrics(body.glb(faces=faces, face_uv_idx=uv_idx), body.silhouette())
    assert m.degenerate_face_count == 5
    assert failures("mesh", m.row()) == {"no_degenerate_faces": "ERROR"}


def test_zero_area_face_is_degenerate(body) -> None:
    vertices = body.vertices.copy()
    a, b, c = body.faces[100]
    vertices[c] = (vertices[a] + vertices[b]) / 2  # collinear corners, no repeated index
    assert mesh_topology(vertices, body.faces).degenerate_face_count >= 1


def test_duplicate_faces_fail(body, failures) -> None:
    faces = np.vstack([body.faces, body.faces[[10, 20, 30]][:, [1, 2, 0]]])  # same corners, rotated
    uv_idx = np.vstack([body.face_uv_idx, body.face_uv_idx[[10, 20, 30]][:, [1, 2, 0]]])
    m = mesh_glb_metrics(body.glb(faces=faces, face_uv_idx=uv_idx), body.silhouette())
    assert m.duplicate_face_count == 3
    assert failures("mesh", m.row()) == {"no_duplicate_faces": "ERROR"}


def test_nan_vertices_fail(body, failures) -> None:
    vertices = body.vertices.copy()
    vertices[[100, 5000]] = np.nan
    m = mesh_glb_metrics(body.glb(vertices=vertices), body.silhouette())
    assert m.nonfinite_vertex_count >= 2
    assert failures("mesh", m.row()) == {"vertices_finite": "ERROR"}


def test_exploded_vertex_fails(body, failures) -> None:
    vertices = body.vertices.copy()
    vertices[1234] += (0.0, -3.0, 0.0)  # flung 3 m up (camera y points down)
    m = mesh_glb_metrics(body.glb(vertices=vertices), body.silhouette())
    assert m.bbox_max_extent_m > 3.0 and m.max_edge_length_m > 2.0
    failed = failures("mesh", m.row())
    assert failed["no_exploded_vertices"] == "ERROR" and failed["no_long_edges"] == "ERROR"


def test_non_manifold_edge_is_counted(body) -> None:
    a, b, _ = body.faces[0]
    elsewhere = int(body.faces[5000, 0])
    faces = np.vstack([body.faces, [a, b, elsewhere]])  # a third face on edge a-b
    m = mesh_metrics(body.vertices, faces)
    assert m.non_manifold_edge_count == 1


def test_self_intersection_is_estimated(body) -> None:
    vertices = body.vertices.copy()
    left = vertices[:, 0] > 0.12  # the subject's left arm region
    vertices[left] -= (0.25, 0.0, 0.0)  # pushed into the torso
    clean = mesh_metrics(body.vertices, body.faces).self_intersection_fraction
    pushed = mesh_metrics(vertices, body.faces).self_intersection_fraction
    assert pushed > 0.005 > clean


def test_missing_uv_and_texture_fail(body, failures) -> None:
    row = mesh_metrics(body.vertices, body.faces, uv=None, texture_size=None, silhouette_iou=0.9).row()
    failed = failures("mesh", row)
    assert {"has_uv", "uv_coverage", "texture_width", "texture_height"} <= set(failed)


def test_missing_silhouette_is_not_a_pass(body, good_mesh_glb, failures) -> None:
    row = mesh_glb_metrics(good_mesh_glb).row()  # no camera / mask: silhouette_iou None
    assert row["silhouette_iou"] is None
    assert failures("mesh", row) == {"silhouette_overlaps_person": "ERROR", "silhouette_good": "WARN"}
