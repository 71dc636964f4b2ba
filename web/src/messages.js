// Error codes (the same as the CLI's, docs/errors.md) in words a person understands.

const MESSAGES = {
  EMPTY_FILE: "That file is empty. Please choose a photo.",
  NOT_AN_IMAGE: "That file is not a photo we can read. Please use a JPEG, PNG or WebP image.",
  TRUNCATED_IMAGE: "That photo seems to be cut short (perhaps the upload or download did not finish). Please try another copy.",
  CORRUPT_IMAGE: "That photo is damaged and cannot be read. Please try another copy.",
  FILE_TOO_LARGE: "That photo is too large. Please choose a smaller one.",
  DECOMPRESSION_BOMB: "That image has far too many pixels. Please choose a normal photo.",
  IMAGE_TOO_SMALL: "That photo is too small. Please use a photo at least a few hundred pixels across.",
  NO_PERSON: "We could not find a person in that photo. Please use a photo where you are clearly visible.",
  PERSON_TOO_SMALL: "The person in that photo is too small. Please use a photo where you fill more of the picture.",
  FIT_FAILED: "We could not make out enough of your body. A photo showing you from head to knees or feet works best.",
  INVALID_HINT: "One of the optional details is out of range (height must be between 50 and 250 cm).",
  QUALITY_GATE_FAILED: "The avatar did not pass our quality checks. Please try another photo, ideally standing and facing the camera.",
  STORE_UNAVAILABLE: "Our storage is having trouble right now. Please try again in a few minutes.",
  INTERNAL_ERROR: "Something went wrong on our side. Please try again.",
  UNAUTHENTICATED: "Please enter your API key (top right) first.",
  FORBIDDEN: "Your key is not allowed to do that.",
  NOT_FOUND: "We could not find that avatar. It may have been deleted.",
  SHARE_LINK_EXPIRED: "This share link has expired or was revoked.",
  RATE_LIMITED: "Too many requests. Please wait a moment.",
};

export function inWords(code, fallback) {
  return MESSAGES[code] || fallback || "Something went wrong. Please try again.";
}

export const STEP_LABELS = {
  photo: "Reading the photo",
  keypoints: "Finding you in the photo",
  smplx_params: "Fitting your body",
  mesh: "Dressing and colouring",
  rigged_glb: "Rigging for animation",
};
