// Loads a VRM with three.js's GLTFLoader + @pixiv/three-vrm's VRMLoaderPlugin, as VRM apps do,
// and reports what three-vrm read: window.vrmHarness.load(url) ->
//   {specVersion, meta, humanBones: {vrmName: nodeName}, expressions: [...], lookAtType,
//    expressionEffects: {name: {targetName: influence}}  (each expression set to 1 alone),
//    gaze: {yawed, pitched: {rest, turned: {left, right}}} (eye directions under lookAt),
//    pose: {rest, lowered}}  (upper arm -> elbow world directions per side, through three-vrm's
//    normalised humanoid: `rest` with every normalised bone at identity, i.e. the T-pose that
//    VRM animations are authored for; `lowered` with the upper arms turned 75 deg down about Z,
//    as a T-pose-authored animation would turn them)
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { VRMLoaderPlugin } from "@pixiv/three-vrm";

async function load(url) {
  const loader = new GLTFLoader();
  loader.register((parser) => new VRMLoaderPlugin(parser));
  const gltf = await loader.loadAsync(url);
  const vrm = gltf.userData.vrm;
  if (!vrm) throw new Error("three-vrm found no VRM in the file");
  const humanBones = {};
  for (const [name, bone] of Object.entries(vrm.humanoid.humanBones)) {
    if (bone && bone.node) humanBones[name] = bone.node.name;
  }
  let mesh = null;
  vrm.scene.traverse((node) => { if (node.isSkinnedMesh && !mesh) mesh = node; });
  const targetNames = Object.keys(mesh.morphTargetDictionary);
  const expressionEffects = {};
  const names = vrm.expressionManager.expressions.map((e) => e.expressionName);
  for (const name of names) {
    for (const other of names) vrm.expressionManager.setValue(other, 0);
    vrm.expressionManager.setValue(name, 1);
    vrm.update(1 / 60);
    const effect = {};
    mesh.morphTargetInfluences.forEach((w, i) => { if (w > 1e-6) effect[targetNames[i]] = w; });
    expressionEffects[name] = effect;
  }
  for (const other of names) vrm.expressionManager.setValue(other, 0);
  const pose = { rest: armDirections(vrm, 0), lowered: armDirections(vrm, 75) };
  const gaze = vrm.lookAt ? { yawed: eyeDirections(vrm, 90, 0), pitched: eyeDirections(vrm, 0, 90) } : null;
  return {
    pose,
    specVersion: vrm.meta.metaVersion,
    meta: vrm.meta,
    humanBones,
    expressions: names,
    lookAtType: vrm.lookAt ? vrm.lookAt.applier.constructor.type : null,
    expressionEffects,
    gaze,
  };
}

function eyeDirections(vrm, yaw, pitch) {
  // Where each eye points (its world +Z, the way the avatar faces at rest) with lookAt's yaw and
  // pitch set (degrees; yaw > 0 turns towards the avatar's left; three-vrm turns pitch > 0 down), and at rest
  const read = () => {
    vrm.update(1 / 60);
    vrm.scene.updateMatrixWorld(true);
    const out = {};
    for (const side of ["left", "right"]) {
      const node = vrm.humanoid.getRawBoneNode(`${side}Eye`);
      out[side] = node ? new THREE.Vector3(0, 0, 1).applyQuaternion(node.getWorldQuaternion(new THREE.Quaternion())).toArray() : null;
    }
    return out;
  };
  vrm.lookAt.autoUpdate = false;
  vrm.lookAt.yaw = 0;
  vrm.lookAt.pitch = 0;
  const rest = read();
  vrm.lookAt.yaw = yaw;
  vrm.lookAt.pitch = pitch;
  const turned = read();
  vrm.lookAt.yaw = 0;
  vrm.lookAt.pitch = 0;
  read();
  return { rest, turned };
}

function armDirections(vrm, downDegrees) {
  // A T-pose-authored animation key: normalised rotations, identity = the VRM's rest
  vrm.humanoid.resetNormalizedPose();
  const angle = THREE.MathUtils.degToRad(downDegrees);
  vrm.humanoid.setNormalizedPose({
    leftUpperArm: { rotation: new THREE.Quaternion().setFromAxisAngle(new THREE.Vector3(0, 0, 1), -angle).toArray() },
    rightUpperArm: { rotation: new THREE.Quaternion().setFromAxisAngle(new THREE.Vector3(0, 0, 1), angle).toArray() },
  });
  vrm.update(1 / 60);
  vrm.scene.updateMatrixWorld(true);
  const out = {};
  for (const side of ["left", "right"]) {
    const a = vrm.humanoid.getRawBoneNode(`${side}UpperArm`).getWorldPosition(new THREE.Vector3());
    const b = vrm.humanoid.getRawBoneNode(`${side}LowerArm`).getWorldPosition(new THREE.Vector3());
    out[side] = b.sub(a).normalize().toArray();
  }
  vrm.humanoid.resetNormalizedPose();
  vrm.update(1 / 60);
  return out;
}

window.vrmHarness = { load, ready: true };
