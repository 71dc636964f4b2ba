// The 3D view: the avatar (or a placeholder figure while it builds) under soft light on a
// ground that catches its shadow; orbit and zoom; one-click clips and face expressions.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

// ARKit blendshape weights per one-click expression (the rig's face targets use ARKit names).
export const EXPRESSIONS = {
  neutral: {},
  smile: { mouthSmileLeft: 0.8, mouthSmileRight: 0.8, cheekSquintLeft: 0.4, cheekSquintRight: 0.4, eyeSquintLeft: 0.2, eyeSquintRight: 0.2 },
  surprise: { jawOpen: 0.35, eyeWideLeft: 0.8, eyeWideRight: 0.8, browInnerUp: 0.8, browOuterUpLeft: 0.6, browOuterUpRight: 0.6 },
  wink: { eyeBlinkLeft: 1.0, mouthSmileLeft: 0.4 },
};

export const CLIP_LABELS = {
  photo_pose: "Photo pose",
  idle: "Idle",
  wave: "Wave",
  walk: "Walk",
  talk: "Talk",
  blink: "Blink",
  photo_transition: "Into the photo pose",
};

export class AvatarViewer {
  constructor(container) {
    this.container = container;
    this.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true, alpha: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    this.renderer.outputColorSpace = THREE.SRGBColorSpace;
    this.renderer.toneMapping = THREE.ACESFilmicToneMapping;
    this.renderer.shadowMap.enabled = true;
    this.renderer.shadowMap.type = THREE.PCFShadowMap;
    container.appendChild(this.renderer.domElement);

    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(35, 1, 0.05, 50);
    this.camera.position.set(0.6, 1.3, 3.6);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.enableDamping = true;
    this.controls.minDistance = 0.6;
    this.controls.maxDistance = 8;
    this.controls.target.set(0, 0.9, 0);

    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x8d8f96, 1.6));
    const sun = new THREE.DirectionalLight(0xffffff, 1.8);
    sun.position.set(1.5, 4, 2.5);
    sun.castShadow = true;
    sun.shadow.mapSize.set(1024, 1024);
    sun.shadow.radius = 6;
    Object.assign(sun.shadow.camera, { left: -1.5, right: 1.5, top: 2.5, bottom: -0.5, near: 0.5, far: 10 });
    this.scene.add(sun);
    const ground = new THREE.Mesh(new THREE.CircleGeometry(3, 64), new THREE.ShadowMaterial({ opacity: 0.28 }));
    ground.rotation.x = -Math.PI / 2;
    ground.receiveShadow = true;
    this.scene.add(ground);

    this.timer = new THREE.Timer();
    this.clearAvatar(); // nothing shown yet: the same empty state as after clearing
    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
    this.renderer.setAnimationLoop(() => this.frame());
  }

  resize() {
    const { clientWidth: w, clientHeight: h } = this.container;
    if (!w || !h) return;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
  }

  frame() {
    this.timer.update();
    const dt = this.timer.getDelta();
    if (this.mixer) this.mixer.update(dt);
    if (this.placeholder) this.placeholder.rotation.y += dt * 0.6;
    this.controls.update();
    this.renderer.render(this.scene, this.camera);
  }

  // A faceless grey figure that turns slowly while the avatar builds.
  showPlaceholder() {
    this.clearAvatar();
    const material = new THREE.MeshStandardMaterial({ color: 0xb9c0cc, roughness: 0.8 });
    const figure = new THREE.Group();
    const part = (geometry, x, y) => {
      const mesh = new THREE.Mesh(geometry, material);
      mesh.position.set(x, y, 0);
      mesh.castShadow = true;
      figure.add(mesh);
    };
    part(new THREE.SphereGeometry(0.11, 32, 16), 0, 1.62);
    part(new THREE.CapsuleGeometry(0.17, 0.45, 8, 24), 0, 1.18);
    for (const side of [-1, 1]) {
      part(new THREE.CapsuleGeometry(0.065, 0.72, 6, 16), side * 0.1, 0.47);
      const arm = new THREE.Mesh(new THREE.CapsuleGeometry(0.05, 0.55, 6, 16), material);
      arm.position.set(side * 0.3, 1.1, 0);
      arm.rotation.z = side * 0.35;
      arm.castShadow = true;
      figure.add(arm);
    }
    this.placeholder = figure;
    this.scene.add(figure);
    document.body.dataset.avatar = "placeholder";
  }

  clearAvatar() {
    for (const object of [this.placeholder, this.avatar]) if (object) this.scene.remove(object);
    this.placeholder = null;
    this.avatar = null;
    this.mixer = null;
    this.clips = [];
    this.faceMeshes = [];
    this.currentClip = null;
  }

  async load(url) {
    const gltf = await new GLTFLoader().loadAsync(url);
    this.clearAvatar();
    this.avatar = gltf.scene;
    this.avatar.traverse((object) => {
      if (object.isMesh) {
        object.castShadow = true;
        object.frustumCulled = false; // skinned bounds follow the bind pose, not the clip
        if (object.morphTargetDictionary) this.faceMeshes.push(object);
      }
    });
    this.scene.add(this.avatar);
    this.mixer = new THREE.AnimationMixer(this.avatar);
    this.clips = gltf.animations;
    this.frameAvatar();
    document.body.dataset.avatar = "loaded";
    return { clips: this.clips.map((c) => c.name), expressions: this.faceMeshes.length ? Object.keys(EXPRESSIONS) : [] };
  }

  // Put the whole avatar in view, whatever its height.
  frameAvatar() {
    const box = new THREE.Box3().setFromObject(this.avatar);
    const size = box.getSize(new THREE.Vector3());
    const centre = box.getCenter(new THREE.Vector3());
    const distance = (size.y * 0.5) / Math.tan(THREE.MathUtils.degToRad(this.camera.fov * 0.5)) * 1.35;
    this.controls.target.copy(centre);
    this.camera.position.set(centre.x + distance * 0.25, centre.y + size.y * 0.1, centre.z + distance);
    this.controls.update();
  }

  play(name) {
    const clip = this.clips.find((c) => c.name === name);
    if (!clip || !this.mixer) return false;
    this.mixer.stopAllAction();
    this.mixer.clipAction(clip).reset().play();
    this.currentClip = name;
    document.body.dataset.clip = name;
    return true;
  }

  // Clips key the face's morph weights too; an expression set here is layered after the clip.
  express(name) {
    const weights = EXPRESSIONS[name];
    if (!weights) return false;
    if (this.currentClip && name !== "neutral") {
      this.mixer.stopAllAction(); // the clip would key the face back
      this.currentClip = null;
    }
    for (const mesh of this.faceMeshes) {
      mesh.morphTargetInfluences.fill(0);
      for (const [target, weight] of Object.entries(weights)) {
        const index = mesh.morphTargetDictionary[target];
        if (index !== undefined) mesh.morphTargetInfluences[index] = weight;
      }
    }
    document.body.dataset.expression = name;
    return true;
  }
}
