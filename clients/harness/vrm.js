// Loads a VRM with three.js's GLTFLoader + @pixiv/three-vrm's VRMLoaderPlugin, as VRM apps do,
// and reports what three-vrm read: window.vrmHarness.load(url) ->
//   {specVersion, meta, humanBones: {vrmName: nodeName}, expressions: [...], lookAtType,
//    expressionEffects: {name: {targetName: influence}}}  (each expression set to 1 alone)
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
  return {
    specVersion: vrm.meta.metaVersion,
    meta: vrm.meta,
    humanBones,
    expressions: names,
    lookAtType: vrm.lookAt ? vrm.lookAt.applier.constructor.type : null,
    expressionEffects,
  };
}

window.vrmHarness = { load, ready: true };
