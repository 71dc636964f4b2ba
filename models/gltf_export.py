"""A minimal, validator-clean glTF 2.0 (GLB) writer for one skinned, textured, animated mesh.

Pure numpy + pygltflib: nothing here knows about Anny. Callers hand over data already in glTF
conventions (Y up, metres, facing +Z, UV origin top-left, counter-clockwise front faces) and this
module only packs it, following the glTF 2.0 skinning rules strictly:

- one buffer, every bufferView 4-byte aligned; vertex attributes target ARRAY_BUFFER, indices
  ELEMENT_ARRAY_BUFFER, inverse bind matrices / animation data / the image have no target;
- JOINTS_0 (VEC4 unsigned short) + WEIGHTS_0 (VEC4 float, rows summing to 1 in float32);
- inverse bind matrices in skin.joints order, column-major;
- joint nodes carry their local bind TRS (translation + unit rotation, no scale), the skinned mesh
  node is a scene root with an identity transform;
- animation samplers are LINEAR, their input accessors carry min/max;
- morph targets (optional) are POSITION-only sparse accessors with min/max of the applied data,
  default weights 0, their names in `mesh.extras.targetNames` (the de-facto convention three.js,
  Blender and Babylon.js read); a clip may animate them through a `weights` channel on the mesh
  node (keys x targets values).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib
from scipy.spatial.transform import Rotation

from models.errors import ErrorCode, PipelineError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_INFLUENCES = 4

# glTF enums (spelled out so the JSON is readable next to the code).
_FLOAT = pygltflib.FLOAT  # 5126
_USHORT = pygltflib.UNSIGNED_SHORT  # 5123
_UINT = pygltflib.UNSIGNED_INT  # 5125
_ARRAY_BUFFER = pygltflib.ARRAY_BUFFER  # 34962
_ELEMENT_ARRAY_BUFFER = pygltflib.ELEMENT_ARRAY_BUFFER  # 34963
_LINEAR = 9729
_LINEAR_MIPMAP_LINEAR = 9987
_REPEAT = 10497


@dataclass
class SkinnedMeshData:
    positions: np.ndarray  # (N,3) float32, glTF frame (Y up, metres, facing +Z), bind pose
    normals: np.ndarray  # (N,3) float32 unit
    uvs: np.ndarray  # (N,2) float32, glTF convention (origin top-left)
    indices: np.ndarray  # (F,3) uint32, counter-clockwise front faces
    joints: np.ndarray  # (N,4) uint16 joint indices into skeleton order
    weights: np.ndarray  # (N,4) float32, rows sum to 1 (unused slots joint 0 weight 0)
    texture_png: bytes
    # Optional morph targets: (M,N,3) position offsets in the bind frame, named (ARKit names);
    # written as sparse accessors (only the vertices a target moves), names in mesh.extras.
    morph_targets: np.ndarray | None = None
    target_names: list[str] | None = None


@dataclass
class Skeleton:
    names: list[str]
    parents: list[int]  # -1 for root; parents before children
    bind_world: np.ndarray  # (J,4,4) world bind matrices in glTF frame (rigid)


@dataclass
class AnimationClip:
    name: str
    times: np.ndarray  # (T,) seconds, increasing
    local_rotations: np.ndarray  # (T,J,4) unit quaternions xyzw (glTF order), node-local
    root_translations: np.ndarray  # (T,3) local translation of the root joint node
    morph_weights: np.ndarray | None = None  # (T,M) morph target weights of the mesh, if animated


# ---------------------------------------------------------------------------------------------
# Small numeric helpers shared with the rigging code
# ---------------------------------------------------------------------------------------------


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 matrices (..., 4, 4), exact bottom row (validators check it)."""
    r = m[..., :3, :3]
    rt = np.swapaxes(r, -1, -2)
    out = np.zeros_like(m)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def local_from_world(world: np.ndarray, parents: list[int]) -> np.ndarray:
    """Node-local matrices L_j = inv(W_parent) W_j for world matrices (..., J, 4, 4)."""
    local = world.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            local[..., j, :, :] = rigid_inverse(world[..., p, :, :]) @ world[..., j, :, :]
    return local


def world_from_local(local: np.ndarray, parents: list[int]) -> np.ndarray:
    """Forward kinematics W_j = W_parent L_j (parents must precede children)."""
    world = local.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            world[..., j, :, :] = world[..., p, :, :] @ local[..., j, :, :]
    return world


def quaternions_from_matrices(rot: np.ndarray) -> np.ndarray:
    """Unit xyzw quaternions (..., 4) of rotation matrices (..., 3, 3), in float64."""
    flat = rot.reshape(-1, 3, 3).astype(np.float64)
    q = Rotation.from_matrix(flat).as_quat()  # xyzw; scipy orthonormalises first
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q.reshape(rot.shape[:-2] + (4,))


def make_quaternions_continuous(q: np.ndarray) -> np.ndarray:
    """Flip signs along axis 0 (time) so consecutive keys are in the same hemisphere (no long
    way round under LINEAR slerp)."""
    out = np.array(q, dtype=np.float64, copy=True)
    for t in range(1, out.shape[0]):
        flip = np.sum(out[t] * out[t - 1], axis=-1) < 0.0
        out[t][flip] *= -1.0
    return out


def matrices_from_trs(translation: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """Rigid 4x4 matrices (..., 4, 4) from translations (..., 3) and xyzw quaternions (..., 4)."""
    shape = quat_xyzw.shape[:-1]
    m = np.zeros(shape + (4, 4))
    m[..., :3, :3] = Rotation.from_quat(quat_xyzw.reshape(-1, 4)).as_matrix().reshape(shape + (3, 3))
    m[..., :3, 3] = translation
    m[..., 3, 3] = 1.0
    return m


def normalize_weights_float32(weights: np.ndarray) -> np.ndarray:
    """Rows summing to 1 as exactly as float32 allows: normalise in float64, cast, then put the
    float32 rounding residual on each row's largest weight (the validator sums in doubles)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    w32 = w.astype(np.float32)
    rows = np.arange(len(w32))
    top = np.argmax(w32, axis=1)
    others = w32.astype(np.float64).sum(axis=1) - w32[rows, top].astype(np.float64)
    w32[rows, top] = (1.0 - others).astype(np.float32)
    return w32


# ---------------------------------------------------------------------------------------------
# Buffer packing
# ---------------------------------------------------------------------------------------------


class _BufferBuilder:
    """Accumulates bufferViews/accessors into one 4-byte aligned binary blob."""

    def __init__(self, gltf: pygltflib.GLTF2) -> None:
        self.gltf = gltf
        self.blob = bytearray()

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = -len(self.blob) % 4
        self.blob += b"\0" * pad
        self.gltf.bufferViews.append(
            pygltflib.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data), target=target)
        )
        self.blob += data
        return len(self.gltf.bufferViews) - 1

    def accessor(
        self,
        array: np.ndarray,
        accessor_type: str,
        component_type: int,
        target: int | None = None,
        with_min_max: bool = False,
        view: int | None = None,
        byte_offset: int = 0,
    ) -> int:
        """An accessor over `array` (count, ...), in a fresh bufferView unless `view` is given
        (then the data must already lie in that view at `byte_offset`)."""
        if view is None:
            view = self.view(np.ascontiguousarray(array).tobytes(), target)
        count = int(array.shape[0])
        acc = pygltflib.Accessor(
            bufferView=view,
            byteOffset=byte_offset,
            componentType=component_type,
            count=count,
            type=accessor_type,
        )
        if with_min_max:
            flat = array.reshape(count, -1)
            # float32 values widened to float64 are exact, so min/max match the data bit for bit.
            acc.min = [float(v) for v in flat.min(axis=0)]
            acc.max = [float(v) for v in flat.max(axis=0)]
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


# ---------------------------------------------------------------------------------------------
# Validation of the inputs (fail early with a clear message rather than write a broken file)
# ---------------------------------------------------------------------------------------------


def _check_inputs(mesh: SkinnedMeshData, skeleton: Skeleton, clips: list[AnimationClip]) -> None:
    n = mesh.positions.shape[0]
    j = len(skeleton.names)
    for name, arr, cols in (
        ("positions", mesh.positions, 3),
        ("normals", mesh.normals, 3),
        ("uvs", mesh.uvs, 2),
        ("joints", mesh.joints, MAX_INFLUENCES),
        ("weights", mesh.weights, MAX_INFLUENCES),
    ):
        if arr.shape != (n, cols):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n}, {cols})")
    if mesh.indices.ndim != 2 or mesh.indices.shape[1] != 3:
        raise ValueError("indices must be (F, 3)")
    if mesh.indices.size and (mesh.indices.min() < 0 or mesh.indices.max() >= n):
        raise ValueError("indices out of range")
    if mesh.joints.max(initial=0) >= j:
        raise ValueError("joint index out of range of the skeleton")
    if not mesh.texture_png.startswith(PNG_MAGIC):
        raise ValueError("texture_png is not a PNG image")
    if len(skeleton.parents) != j or skeleton.bind_world.shape != (j, 4, 4):
        raise ValueError("skeleton names/parents/bind_world disagree in length")
    if skeleton.parents[0] != -1 or any(not (-1 < p < i) for i, p in enumerate(skeleton.parents[1:], 1)):
        raise ValueError("skeleton must have a single root at index 0 and parents before children")
    m = 0 if mesh.morph_targets is None else len(mesh.morph_targets)
    if m and (mesh.morph_targets.shape != (m, n, 3) or len(mesh.target_names or []) != m):
        raise ValueError("morph_targets must be (M, N, 3) with M target_names")
    for clip in clips:
        if clip.morph_weights is not None and clip.morph_weights.shape != (clip.times.shape[0], m):
            raise ValueError(f"clip {clip.name!r} morph weights must be (T, {m})")
        t = clip.times.shape[0]
        if clip.local_rotations.shape != (t, j, 4) or clip.root_translations.shape != (t, 3):
            raise ValueError(f"clip {clip.name!r} has inconsistent shapes")
        if t < 1 or np.any(np.diff(clip.times) <= 0):
            raise ValueError(f"clip {clip.name!r} times must be strictly increasing")


def _clean_skin(joints: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unused slots -> joint 0 / weight 0, duplicated joints merged, rows renormalised."""
    joints = np.asarray(joints, dtype=np.int64).copy()
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None).copy()
    # Merge duplicates: a joint listed twice with non-zero weight is invalid glTF.
    for a in range(MAX_INFLUENCES):
        for b in range(a + 1, MAX_INFLUENCES):
            same = (joints[:, a] == joints[:, b]) & (weights[:, b] > 0)
            weights[same, a] += weights[same, b]
            weights[same, b] = 0.0
    if np.any(weights.sum(axis=1) <= 0):
        raise ValueError("a vertex has no skin influence")
    w32 = normalize_weights_float32(weights)
    joints[w32 == 0] = 0
    return joints.astype(np.uint16), w32


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------


def _add_joint_nodes(gltf: pygltflib.GLTF2, skeleton: Skeleton) -> None:
    """Joint nodes 0..J-1 (node index == joint index), holding their local bind TRS."""
    local = local_from_world(np.asarray(skeleton.bind_world, dtype=np.float64), skeleton.parents)
    quats = quaternions_from_matrices(local[:, :3, :3])
    children: list[list[int]] = [[] for _ in skeleton.names]
    for j, p in enumerate(skeleton.parents):
        if p >= 0:
            children[p].append(j)
    for j, name in enumerate(skeleton.names):
        gltf.nodes.append(
            pygltflib.Node(
                name=name,
                translation=[float(v) for v in local[j, :3, 3]],
                rotation=[float(v) for v in quats[j]],
                children=children[j] or None,
            )
        )


def _add_mesh(gltf: pygltflib.GLTF2, bb: _BufferBuilder, mesh: SkinnedMeshData, name: str) -> int:
    positions = np.ascontiguousarray(mesh.positions, dtype=np.float32)
    normals = np.asarray(mesh.normals, dtype=np.float64)
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    joints, weights = _clean_skin(mesh.joints, mesh.weights)
    # 16-bit indices when they fit (65535 is the forbidden primitive-restart value).
    n = positions.shape[0]
    index_dtype, index_ctype = (np.uint16, _USHORT) if n < 65535 else (np.uint32, _UINT)
    indices = np.ascontiguousarray(mesh.indices, dtype=index_dtype).reshape(-1)

    attrs = pygltflib.Attributes(
        POSITION=bb.accessor(positions, "VEC3", _FLOAT, _ARRAY_BUFFER, with_min_max=True),
        NORMAL=bb.accessor(normals.astype(np.float32), "VEC3", _FLOAT, _ARRAY_BUFFER),
        TEXCOORD_0=bb.accessor(np.asarray(mesh.uvs, np.float32), "VEC2", _FLOAT, _ARRAY_BUFFER),
        JOINTS_0=bb.accessor(joints, "VEC4", _USHORT, _ARRAY_BUFFER),
        WEIGHTS_0=bb.accessor(weights, "VEC4", _FLOAT, _ARRAY_BUFFER),
    )
    primitive = pygltflib.Primitive(
        attributes=attrs,
        indices=bb.accessor(indices, "SCALAR", index_ctype, _ELEMENT_ARRAY_BUFFER),
        material=0,
        mode=pygltflib.TRIANGLES,
    )
    gltf_mesh = pygltflib.Mesh(name=name, primitives=[primitive])
    if mesh.morph_targets is not None and len(mesh.morph_targets):
        primitive.targets = [
            {"POSITION": sparse_offsets_accessor(bb, target)} for target in mesh.morph_targets
        ]
        gltf_mesh.weights = [0.0] * len(mesh.morph_targets)
        gltf_mesh.extras = {"targetNames": list(mesh.target_names or [])}
    gltf.meshes.append(gltf_mesh)
    return len(gltf.meshes) - 1


# A morph target moves a vertex by less than this (metres) -> stored as no move: Anny's face
# targets carry ~10 % of their entries below 0.1 mm, far below what any screen shows.
MIN_MORPH_OFFSET_M = 1e-4


def sparse_offsets_accessor(bb: _BufferBuilder, offsets: np.ndarray) -> int:
    """A VEC3 float accessor of per-vertex offsets (N,3) stored sparsely: no bufferView (the
    base is all zeros, as glTF defines for a sparse accessor without one), indices as unsigned
    short when they fit, only the vertices moved by at least `MIN_MORPH_OFFSET_M`; min/max over
    all vertices (zeros included), as the validator checks.

    Tools that load and re-save glTF with pygltflib write `byteOffset: 0` back onto such an
    accessor, which the validator rejects: `drop_orphan_byte_offsets` before saving."""
    offsets = np.asarray(offsets, dtype=np.float32)
    moved = np.flatnonzero(np.linalg.norm(offsets.astype(np.float64), axis=1) >= MIN_MORPH_OFFSET_M)
    values = offsets[moved]
    if len(moved) == 0:  # sparse needs count >= 1: store one explicit zero
        moved, values = np.array([0]), np.zeros((1, 3), np.float32)
    kept = np.zeros_like(offsets)
    kept[moved] = values
    wide = offsets.shape[0] > 65535
    index_dtype, index_ctype = (np.uint32, _UINT) if wide else (np.uint16, _USHORT)
    index_view = bb.view(np.ascontiguousarray(moved.astype(index_dtype)).tobytes())
    value_view = bb.view(np.ascontiguousarray(values).tobytes())
    acc = pygltflib.Accessor(
        bufferView=None,
        byteOffset=None,
        componentType=_FLOAT,
        count=int(offsets.shape[0]),
        type="VEC3",
        min=[float(v) for v in np.minimum(kept.min(axis=0), 0.0)],
        max=[float(v) for v in np.maximum(kept.max(axis=0), 0.0)],
        sparse=pygltflib.Sparse(
            count=len(moved),
            indices=pygltflib.AccessorSparseIndices(bufferView=index_view, componentType=index_ctype),
            values=pygltflib.AccessorSparseValues(bufferView=value_view),
        ),
    )
    bb.gltf.accessors.append(acc)
    return len(bb.gltf.accessors) - 1


def drop_orphan_byte_offsets(gltf: pygltflib.GLTF2) -> None:
    """`byteOffset` removed from accessors without a bufferView (pygltflib reads the absent
    field back as 0 and would write it; the validator rejects a byteOffset without a view)."""
    for acc in gltf.accessors:
        if acc.bufferView is None:
            acc.byteOffset = None


def _add_material(gltf: pygltflib.GLTF2, bb: _BufferBuilder, png: bytes, name: str) -> None:
    """One PBR metallic-roughness material whose base colour is the embedded PNG."""
    gltf.images.append(pygltflib.Image(name=f"{name}_albedo", bufferView=bb.view(png), mimeType="image/png"))
    gltf.samplers.append(
        pygltflib.Sampler(magFilter=_LINEAR, minFilter=_LINEAR_MIPMAP_LINEAR, wrapS=_REPEAT, wrapT=_REPEAT)
    )
    gltf.textures.append(pygltflib.Texture(sampler=0, source=0))
    gltf.materials.append(
        pygltflib.Material(
            name=f"{name}_skin",
            pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                baseColorFactor=[1.0, 1.0, 1.0, 1.0],
                baseColorTexture=pygltflib.TextureInfo(index=0, texCoord=0),
                metallicFactor=0.0,
                roughnessFactor=0.8,
            ),
            doubleSided=False,
        )
    )


def _add_skin(gltf: pygltflib.GLTF2, bb: _BufferBuilder, skeleton: Skeleton) -> None:
    ibm = rigid_inverse(np.asarray(skeleton.bind_world, dtype=np.float64)).astype(np.float32)
    # glTF matrices are column-major: write each matrix transposed.
    ibm_col_major = np.ascontiguousarray(np.swapaxes(ibm, 1, 2)).reshape(len(ibm), 16)
    gltf.skins.append(
        pygltflib.Skin(
            name="skin",
            inverseBindMatrices=bb.accessor(ibm_col_major, "MAT4", _FLOAT),
            skeleton=0,
            joints=list(range(len(skeleton.names))),
        )
    )


def _add_animation(gltf: pygltflib.GLTF2, bb: _BufferBuilder, clip: AnimationClip, mesh_node: int) -> None:
    """One LINEAR sampler per joint rotation plus one for the root translation (and one for the
    morph weights). A track that holds one value over the whole clip is stored with two keys
    (first and last time) instead of all of them: most joints of a clip do not move (the body
    tracks of `blink` and `talk`, all but a few of `wave`), and their keys were ~40 % of the
    animation bytes. All rotation tracks live in one bufferView, one accessor each."""
    times = np.asarray(clip.times, dtype=np.float32)
    t_count, j_count = clip.local_rotations.shape[:2]
    q = make_quaternions_continuous(np.asarray(clip.local_rotations, dtype=np.float64))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    tracks = np.swapaxes(q, 0, 1).astype(np.float32)  # (J,T,4)
    time_acc = bb.accessor(times, "SCALAR", _FLOAT, with_min_max=True)
    ends = times[[0, -1]] if t_count > 1 else times
    held_acc: list[int] = []  # the two-key time accessor, made when first needed

    def input_for(values: np.ndarray) -> tuple[int, np.ndarray]:
        """(time accessor, keys) for a track (T, ...): its two end keys when it holds still."""
        if t_count > 2 and np.all(values == values[:1]):
            if not held_acc:
                held_acc.append(bb.accessor(ends, "SCALAR", _FLOAT, with_min_max=True))
            return held_acc[0], values[[0, -1]]
        return time_acc, values

    keyed = [input_for(tracks[j]) for j in range(j_count)]
    packed = [np.ascontiguousarray(keys) for _, keys in keyed]
    rot_view = bb.view(b"".join(k.tobytes() for k in packed))
    samplers, channels = [], []
    offset = 0
    for j, ((inp, _), keys) in enumerate(zip(keyed, packed, strict=True)):
        acc = bb.accessor(keys, "VEC4", _FLOAT, view=rot_view, byte_offset=offset)
        offset += keys.nbytes
        samplers.append(pygltflib.AnimationSampler(input=inp, output=acc, interpolation="LINEAR"))
        channels.append(
            pygltflib.AnimationChannel(
                sampler=j, target=pygltflib.AnimationChannelTarget(node=j, path="rotation")
            )
        )
    inp, trans = input_for(np.asarray(clip.root_translations, dtype=np.float32))
    samplers.append(
        pygltflib.AnimationSampler(
            input=inp, output=bb.accessor(trans, "VEC3", _FLOAT), interpolation="LINEAR"
        )
    )
    channels.append(
        pygltflib.AnimationChannel(
            sampler=j_count, target=pygltflib.AnimationChannelTarget(node=0, path="translation")
        )
    )
    if clip.morph_weights is not None:
        inp, weights = input_for(np.asarray(clip.morph_weights, dtype=np.float32))
        values = np.ascontiguousarray(weights.reshape(-1))
        samplers.append(
            pygltflib.AnimationSampler(
                input=inp, output=bb.accessor(values, "SCALAR", _FLOAT), interpolation="LINEAR"
            )
        )
        channels.append(
            pygltflib.AnimationChannel(
                sampler=len(samplers) - 1,
                target=pygltflib.AnimationChannelTarget(node=mesh_node, path="weights"),
            )
        )
    gltf.animations.append(pygltflib.Animation(name=clip.name, samplers=samplers, channels=channels))


def write_glb(
    mesh: SkinnedMeshData,
    skeleton: Skeleton,
    clips: list[AnimationClip],
    name: str = "avatar",
) -> bytes:
    """Pack a skinned mesh, its skeleton and animation clips into GLB bytes.

    Node layout: nodes 0..J-1 are the joints (skeleton order, node index == joint index), node J
    is the skinned mesh node. The scene roots are the skeleton root joint and the mesh node.
    """
    _check_inputs(mesh, skeleton, clips)
    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator="avatarpipe"))
    bb = _BufferBuilder(gltf)

    _add_joint_nodes(gltf, skeleton)
    mesh_index = _add_mesh(gltf, bb, mesh, name)
    _add_material(gltf, bb, mesh.texture_png, name)
    _add_skin(gltf, bb, skeleton)
    mesh_node = len(gltf.nodes)
    gltf.nodes.append(pygltflib.Node(name=name, mesh=mesh_index, skin=0))
    for clip in clips:
        _add_animation(gltf, bb, clip, mesh_node)

    gltf.scenes.append(pygltflib.Scene(name=name, nodes=[0, mesh_node]))
    gltf.scene = 0
    pad = -len(bb.blob) % 4
    bb.blob += b"\0" * pad
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(bb.blob)))
    gltf.set_binary_blob(bytes(bb.blob))
    return b"".join(gltf.save_to_bytes())


# ---------------------------------------------------------------------------------------------
# Optional compression (opt-in: clients must set up a meshopt decoder)
# ---------------------------------------------------------------------------------------------

# Where `make test` / `npm ci` in clients/ puts the pinned gltfpack (npm package, WebAssembly).
_CLIENTS_BIN = Path(__file__).resolve().parent.parent / "clients" / "node_modules" / ".bin"


def find_gltfpack(configured: str | None = None) -> str | None:
    """The gltfpack executable: ``configured`` (the configuration's AVATARPIPE_GLTFPACK), the
    repo's clients/ install, or PATH."""
    if configured:
        return configured
    local = _CLIENTS_BIN / "gltfpack"
    if local.exists():
        return str(local)
    return shutil.which("gltfpack")


def compress_glb(glb: bytes, gltfpack: str | None = None, timeout_s: float = 120.0) -> bytes:
    """Mesh and animation data compressed with meshoptimizer's gltfpack (`-cc`):
    EXT_meshopt_compression + KHR_mesh_quantization, which three.js, Babylon.js and Unity's
    glTFast decode with the meshopt decoder. Node names, the skin, materials and animation
    names are kept; the texture is passed through unchanged."""
    tool = gltfpack or find_gltfpack()
    if tool is None:
        raise PipelineError(
            ErrorCode.INTERNAL_ERROR,
            "GLB compression was requested but gltfpack is not installed: run `make clients` "
            "(npm ci in clients/) or set AVATARPIPE_GLTFPACK",
        )
    with tempfile.TemporaryDirectory(prefix="avatarpipe-gltfpack-") as tmp:
        source, target = Path(tmp) / "in.glb", Path(tmp) / "out.glb"
        source.write_bytes(glb)
        # -kn keeps named nodes (the joints' names), -km keeps materials, -ke keeps extras
        result = subprocess.run(
            [tool, "-i", str(source), "-o", str(target), "-cc", "-kn", "-km", "-ke"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if result.returncode != 0 or not target.exists():
            raise PipelineError(
                ErrorCode.INTERNAL_ERROR,
                f"gltfpack failed ({result.returncode}): {(result.stderr or result.stdout).strip()[:300]}",
            )
        return target.read_bytes()
