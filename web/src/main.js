// The web app: upload a photo, watch the avatar build, view, pose, download, share, delete.
import * as api from "./api.js";
import { STEP_LABELS, inWords } from "./messages.js";
import { AvatarViewer, CLIP_LABELS } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const viewer = new AvatarViewer($("viewer"));
let maxUploadBytes = 25 * 1024 * 1024;
let current = null; // {upload_id, subject_id}
window.avatarApp = { viewer, get upload() { return current; } };

function showError(code, message) {
  const box = $("error");
  box.textContent = inWords(code, message);
  box.dataset.code = code;
  box.hidden = false;
  document.body.dataset.avatar = document.body.dataset.avatar === "placeholder" ? "failed" : document.body.dataset.avatar;
}

function clearError() {
  $("error").hidden = true;
  delete $("error").dataset.code;
}

function renderSteps(doc) {
  const list = $("steps");
  list.replaceChildren();
  for (const [name, label] of Object.entries(STEP_LABELS)) {
    const step = (doc.steps || {})[name] || { status: "waiting" };
    const item = document.createElement("li");
    item.dataset.step = name;
    item.dataset.state = step.status;
    const seconds = step.seconds != null ? ` · ${step.seconds.toFixed(1)} s` : "";
    item.innerHTML = `<span class="label"></span><span class="state"></span>`;
    item.querySelector(".label").textContent = label;
    item.querySelector(".state").textContent = { waiting: "waiting", running: "working…", done: "done", failed: "failed" }[step.status] + seconds;
    list.append(item);
  }
}

function button(label, onClick, group) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute("aria-pressed", "false");
  b.addEventListener("click", () => {
    for (const other of group.querySelectorAll("button")) other.setAttribute("aria-pressed", "false");
    b.setAttribute("aria-pressed", "true");
    onClick();
  });
  group.append(b);
  return b;
}

async function showAvatar(uploadId) {
  const blob = await api.avatarBlob(uploadId);
  const url = URL.createObjectURL(blob);
  const { clips, expressions } = await viewer.load(url);
  $("download").href = url;
  const clipGroup = $("clips");
  const faceGroup = $("faces");
  clipGroup.replaceChildren();
  faceGroup.replaceChildren();
  for (const name of Object.keys(CLIP_LABELS).filter((n) => clips.includes(n))) {
    const b = button(CLIP_LABELS[name], () => viewer.play(name), clipGroup);
    b.dataset.clip = name;
  }
  for (const name of expressions) {
    const b = button(name[0].toUpperCase() + name.slice(1), () => viewer.express(name), faceGroup);
    b.dataset.expression = name;
  }
  $("controls").hidden = false;
  const first = clipGroup.querySelector('[data-clip="photo_pose"]') || clipGroup.querySelector("button");
  if (first) first.click();
}

async function start(file) {
  clearError();
  if (!file) return;
  if (!file.type.startsWith("image/") && !/\.(jpe?g|png|webp|gif|tiff?)$/i.test(file.name)) return showError("NOT_AN_IMAGE");
  if (file.size === 0) return showError("EMPTY_FILE");
  if (file.size > maxUploadBytes) return showError("FILE_TOO_LARGE");
  $("controls").hidden = true;
  viewer.showPlaceholder();
  $("progress").hidden = false;
  renderSteps({});
  try {
    current = await api.upload(file, {
      build: $("hint-build").value, height_cm: $("hint-height").value, age_group: $("hint-age").value,
    });
    $("status-line").textContent = "";
    const final = await api.followEvents(current.upload_id, renderSteps);
    const doc = final && ["ready", "failed", "failed_quality"].includes(final.status) ? final : await api.status(current.upload_id);
    renderSteps(doc);
    if (doc.status !== "ready") {
      viewer.clearAvatar();
      return showError(doc.error ? doc.error.code : "INTERNAL_ERROR", doc.error && doc.error.message);
    }
    await showAvatar(current.upload_id);
  } catch (error) {
    viewer.clearAvatar();
    showError(error.code || "INTERNAL_ERROR", error.message);
  }
}

async function copyShareLink() {
  try {
    const link = await api.share(current.upload_id);
    const url = new URL(link.url, window.location.href).href;
    await navigator.clipboard.writeText(url).catch(() => {});
    $("status-line").textContent = `Share link copied (valid until ${new Date(link.expires_at).toLocaleString()}): ${url}`;
    $("status-line").dataset.shareUrl = url;
  } catch (error) {
    showError(error.code, error.message);
  }
}

async function deleteMyData() {
  const dialog = $("confirm-delete");
  dialog.showModal();
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "confirm") return;
    try {
      const request = await api.requestErasure(current.upload_id);
      viewer.clearAvatar();
      $("controls").hidden = true;
      $("progress").hidden = true;
      $("status-line").textContent = "";
      $("error").hidden = true;
      document.body.dataset.avatar = "erased";
      document.body.dataset.erasure = request.erasure_id;
      alert("Your data is being erased from every store. You can close this page.");
    } catch (error) {
      showError(error.code, error.message);
    }
  }, { once: true });
}

// A share link opens the viewer on the shared avatar only (read-only: no upload, no delete).
async function openShared(token) {
  $("upload").hidden = true;
  $("actions").hidden = true;
  $("key-panel").hidden = true;
  try {
    const { clips, expressions } = await viewer.load(`/v1/shared/${encodeURIComponent(token)}/avatar.glb`);
    const group = $("clips");
    for (const name of Object.keys(CLIP_LABELS).filter((n) => clips.includes(n))) button(CLIP_LABELS[name], () => viewer.play(name), group);
    for (const name of expressions) button(name[0].toUpperCase() + name.slice(1), () => viewer.express(name), $("faces"));
    $("controls").hidden = false;
    viewer.play("photo_pose");
  } catch {
    $("upload").hidden = false;
    showError("SHARE_LINK_EXPIRED");
  }
}

function wire(shared) {
  $("api-key").value = api.savedKey();
  if (!api.savedKey() && !shared) $("key-panel").open = true;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.saveKey($("api-key").value);
    $("key-panel").open = false;
  });
  const zone = $("drop-zone");
  $("photo-input").addEventListener("change", (event) => start(event.target.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    start(event.dataTransfer.files[0]);
  });
  $("share").addEventListener("click", copyShareLink);
  $("delete").addEventListener("click", deleteMyData);
  api.limits().then((l) => {
    maxUploadBytes = l.max_upload_bytes;
    $("max-size").textContent = `${Math.round(l.max_upload_bytes / 1048576)} MB`;
  }).catch(() => {});
}

const shared = new URLSearchParams(window.location.search).get("share");
wire(shared);
if (shared) openShared(shared);
document.body.dataset.ready = "true";
