// The avatar service's versioned JSON API, as the web app uses it.
// Every error body is {"error": {"code", "message"}}; ApiError carries both.

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const KEY_STORAGE = "avatarpipe.apiKey";

export function savedKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function saveKey(key) {
  localStorage.setItem(KEY_STORAGE, key.trim());
}

function headers(extra = {}) {
  const key = savedKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function answer(response) {
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "HTTP_" + response.status, message: response.statusText };
    throw new ApiError(error.code, error.message, response.status);
  }
  return body;
}

export async function limits() {
  return answer(await fetch("/v1/limits"));
}

export async function upload(file, hints) {
  const form = new FormData();
  form.append("photo", file, file.name || "photo");
  for (const [name, value] of Object.entries(hints)) if (value) form.append(name, value);
  return answer(await fetch("/v1/uploads", { method: "POST", headers: headers(), body: form }));
}

export async function status(uploadId) {
  return answer(await fetch(`/v1/uploads/${uploadId}`, { headers: headers() }));
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
export async function followEvents(uploadId, onStatus) {
  const response = await fetch(`/v1/uploads/${uploadId}/events`, { headers: headers({ Accept: "text/event-stream" }) });
  if (!response.ok) return answer(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) {
        last = JSON.parse(data);
        onStatus(last);
      }
    }
  }
}

export async function avatarBlob(uploadId) {
  const response = await fetch(`/v1/uploads/${uploadId}/avatar.glb`, { headers: headers() });
  if (!response.ok) return answer(response);
  return response.blob();
}

export async function share(uploadId, minutes = 60) {
  return answer(await fetch(`/v1/uploads/${uploadId}/share`, {
    method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify({ minutes }),
  }));
}

export async function requestErasure(uploadId) {
  return answer(await fetch(`/v1/uploads/${uploadId}/erasure-request`, { method: "POST", headers: headers() }));
}
