// Loads a GLB with three.js's GLTFLoader (meshopt decoder set up, as a web client would),
// and exposes window.avatarHarness for the Playwright driver (clients/three_render.mjs):
//   load(url)           -> {clips: [{name, duration}], skinnedMeshes, bones, vertices}
//   render(clip, time)  -> {pixels, width, height, mask (base64 of one byte per pixel)}
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

window.avatarHarness = { load, render, ready: true };
