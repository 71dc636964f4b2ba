// Loads a GLB with three.js's GLTFLoader (meshopt decoder set up, as a web client would),
// and exposes window.avatarHarness for the Playwright driver (clients/three_render.mjs):
//   load(url)           -> {clips: [{name, duration}], skinnedMeshes, bones, vertices}
//   render(clip, time)  -> {pixels, width, height, mask (base64 of one byte per pixel)}
//   addClip(spec)       -> adds a clip given as {name, tracks: [{name, type, times, values}]}
//                          (e.g. a Mixamo-convention clip bound by bone name)
//   probe(clip, time)   -> {bones: {name: [x,y,z]}, box: {min, max}, maxEdgeStretch,
//                          worstEdge} of the skinned mesh at that time (world space)
// The camera is fixed for one model (framed on its bind pose), so frames are comparable.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { MeshoptDecoder } from "three/addons/libs/meshopt_decoder.module.js";

const WIDTH = 240;
const HEIGHT = 360;

const renderer = new THREE.WebGLRenderer({ antialias: false, alpha: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
renderer.setSize(WIDTH, HEIGHT);
renderer.setClearColor(0x000000, 0);
document.body.appendChild(renderer.domElement);

const scene = new THREE.Scene();
scene.add(new THREE.HemisphereLight(0xffffff, 0x444444, 2.0));
const sun = new THREE.DirectionalLight(0xffffff, 1.5);
sun.position.set(1, 2, 3);
scene.add(sun);
const camera = new THREE.PerspectiveCamera(30, WIDTH / HEIGHT, 0.05, 100);
let model = null;
let mixer = null;
let clips = [];

function frameCamera(object) {
  const box = new THREE.Box3().setFromObject(object);
  const size = box.getSize(new THREE.Vector3());
  const centre = box.getCenter(new THREE.Vector3());
  // room for raised arms and strides: 1.5x the bind pose's height
  const height = Math.max(size.y, size.x * HEIGHT / WIDTH) * 1.5;
  const distance = height / 2 / Math.tan(THREE.MathUtils.degToRad(camera.fov / 2));
  camera.position.set(centre.x, centre.y, centre.z + distance);
  camera.lookAt(centre);
  camera.updateMatrixWorld();
}

async function load(url) {
  const loader = new GLTFLoader();
  loader.setMeshoptDecoder(MeshoptDecoder);
  const gltf = await loader.loadAsync(url);
  model = gltf.scene;
  clips = gltf.animations;
  let skinnedMeshes = 0;
  let vertices = 0;
  const bones = new Set();
  model.traverse((node) => {
    if (node.isSkinnedMesh) {
      skinnedMeshes += 1;
      vertices += node.geometry.attributes.position.count;
      node.frustumCulled = false; // the bind pose's bounds do not hold once animated
      node.skeleton.bones.forEach((b) => bones.add(b.name));
    }
  });
  scene.add(model);
  scene.updateMatrixWorld(true);
  frameCamera(model);
  mixer = new THREE.AnimationMixer(model);
  return {
    clips: clips.map((c) => ({ name: c.name, duration: c.duration, tracks: c.tracks.length })),
    skinnedMeshes,
    vertices,
    bones: [...bones],
  };
}

function render(clipName, time) {
  mixer.stopAllAction();
  if (clipName) {
    const clip = THREE.AnimationClip.findByName(clips, clipName);
    if (!clip) throw new Error(`no clip named ${clipName}`);
    // play once and hold the last key, so time == duration shows the clip's end
    const action = mixer.clipAction(clip);
    action.setLoop(THREE.LoopOnce, 1);
    action.clampWhenFinished = true;
    action.reset().play();
    mixer.setTime(time);
  }
  scene.updateMatrixWorld(true);
  renderer.render(scene, camera);
  const gl = renderer.getContext();
  const rgba = new Uint8Array(WIDTH * HEIGHT * 4);
  gl.readPixels(0, 0, WIDTH, HEIGHT, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
  const mask = new Uint8Array(WIDTH * HEIGHT);
  let pixels = 0;
  for (let y = 0; y < HEIGHT; y++) {
    for (let x = 0; x < WIDTH; x++) {
      // readPixels rows start at the bottom: flip to image order
      const on = rgba[((HEIGHT - 1 - y) * WIDTH + x) * 4 + 3] > 0 ? 1 : 0;
      mask[y * WIDTH + x] = on;
      pixels += on;
    }
  }
  let binary = "";
  for (let i = 0; i < mask.length; i++) binary += String.fromCharCode(mask[i]);
  return { pixels, width: WIDTH, height: HEIGHT, mask: btoa(binary) };
}

function addClip(spec) {
  const tracks = spec.tracks.map((t) =>
    t.type === "quaternion"
      ? new THREE.QuaternionKeyframeTrack(t.name, t.times, t.values)
      : new THREE.VectorKeyframeTrack(t.name, t.times, t.values),
  );
  const clip = new THREE.AnimationClip(spec.name, -1, tracks);
  clips.push(clip);
  return { name: clip.name, duration: clip.duration, tracks: tracks.length };
}

function pose(clipName, time) {
  mixer.stopAllAction();
  if (clipName) {
    const action = mixer.clipAction(THREE.AnimationClip.findByName(clips, clipName));
    action.setLoop(THREE.LoopOnce, 1);
    action.clampWhenFinished = true;
    action.reset().play();
    mixer.setTime(time);
  }
  scene.updateMatrixWorld(true);
}

let bindLengths = null;

function skinnedPositions(mesh) {
  const count = mesh.geometry.attributes.position.count;
  const out = new Float32Array(count * 3);
  const v = new THREE.Vector3();
  for (let i = 0; i < count; i++) {
    mesh.getVertexPosition(i, v); // morph targets and skinning applied, mesh-local
    v.applyMatrix4(mesh.matrixWorld);
    out.set([v.x, v.y, v.z], i * 3);
  }
  return out;
}

function edgeLengths(mesh, positions) {
  const index = mesh.geometry.index.array;
  const lengths = new Float32Array(index.length);
  for (let t = 0; t < index.length; t += 3) {
    for (let k = 0; k < 3; k++) {
      const a = index[t + k] * 3;
      const b = index[t + ((k + 1) % 3)] * 3;
      lengths[t + k] = Math.hypot(positions[a] - positions[b], positions[a + 1] - positions[b + 1], positions[a + 2] - positions[b + 2]);
    }
  }
  return lengths;
}

function probe(clipName, time) {
  let mesh = null;
  model.traverse((node) => { if (node.isSkinnedMesh && !mesh) mesh = node; });
  if (!bindLengths) {
    pose(null, 0);
    bindLengths = edgeLengths(mesh, skinnedPositions(mesh));
  }
  pose(clipName, time);
  const positions = skinnedPositions(mesh);
  const lengths = edgeLengths(mesh, positions);
  let maxEdgeStretch = 0;
  let worstEdge = -1;
  for (let e = 0; e < lengths.length; e++) {
    const ratio = lengths[e] / Math.max(bindLengths[e], 1e-6);
    if (ratio > maxEdgeStretch) { maxEdgeStretch = ratio; worstEdge = e; }
  }
  const min = [Infinity, Infinity, Infinity];
  const max = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < positions.length; i += 3) {
    for (let k = 0; k < 3; k++) {
      min[k] = Math.min(min[k], positions[i + k]);
      max[k] = Math.max(max[k], positions[i + k]);
    }
  }
  const bones = {};
  const quaternions = {};
  const p = new THREE.Vector3();
  const q = new THREE.Quaternion();
  mesh.skeleton.bones.forEach((b) => {
    b.getWorldPosition(p);
    b.getWorldQuaternion(q);
    bones[b.name] = [p.x, p.y, p.z];
    quaternions[b.name] = [q.x, q.y, q.z, q.w];
  });
  const worstVertex = worstEdge >= 0 ? mesh.geometry.index.array[worstEdge] : -1;
  return { bones, quaternions, box: { min, max }, maxEdgeStretch, worstVertex };
}

window.avatarHarness = { load, render, addClip, probe, ready: true };
