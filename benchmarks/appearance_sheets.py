"""Contact sheets of the avatar's appearance, rendered from the rigged GLB (issue 13).

`python benchmarks/appearance_sheets.py OUT_DIR [PHOTO ...]` (default photos: samples/ and
../shared/data/photos): for each photo, the pipeline's own steps - keypoints, body fit, the
ARKit expression, clothing offsets, the occlusion-aware bake (with the expression on the bake
surface and the photo's mouth and eye openings left out), the rigged GLB - then one row
photo | GLB at rest from the front, back and left side | face close-up
(`models.eval_appearance.glb_sheet_row`, read back from the GLB bytes). Writes one PNG per
photo and `sheet.png` with all rows; photos the pipeline rejects are listed and skipped.
`--baseline` bakes with the earlier mirror fill instead, for a before/after pair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from models.body_model import anny_topology, load_body_model
from models.clothing import fit_clothing
from models.errors import PipelineError
from models.eval_appearance import glb_sheet_row
from models.expression import anny_facial_targets, blink_lids, fit_anny_expression, posed_expression_offsets
from models.fitting import FitConfig, fit_body
from models.keypoints import DetectorConfig, detect_keypoints
from models.photo import encode_png, normalise_photo
from models.rigging import build_rigged_avatar
from models.texture import TextureConfig, bake_texture, body_layout

REPO = Path(__file__).resolve().parents[1]


def sheet_row(path: Path, body, baseline: bool = False) -> np.ndarray:
    model = body.model
    topo = anny_topology(model)
    photo = normalise_photo(path.read_bytes())
    kp = detect_keypoints(photo.image, DetectorConfig())
    fit = fit_body(kp, body, FitConfig())
    clothing = fit_clothing(model, fit.phenotype, fit.pose_parameters, fit.camera, kp.mask, topo)
    args = (topo["faces"], topo["uv"], topo["face_uv_idx"], fit.camera, photo.image, kp.mask)
    if baseline:
        baked = bake_texture(clothing.posed_vertices, *args, TextureConfig(unseen_fill="mirror"))
    else:
        expression = fit_anny_expression(model, fit.phenotype, kp.face).weights
        surface = clothing.posed_vertices + posed_expression_offsets(
            clothing.rest_vertices, clothing.posed_vertices, anny_facial_targets(model), expression
        )
        layout = body_layout(
            clothing.rest_vertices, topo["faces"], topo["uv"], topo["face_uv_idx"],
            topo["skin_indices"], topo["skin_weights"], [str(b) for b in model.bone_labels],
            blink_lids(anny_facial_targets(model)),
        )  # fmt: skip
        baked = bake_texture(
            surface, *args, TextureConfig(), layout=layout, face_landmarks=kp.face, hand_landmarks=(kp.left_hand, kp.right_hand)
        )
    avatar = build_rigged_avatar(model, fit.phenotype, fit.pose_parameters, encode_png(baked.image), clothing.offsets)
    return glb_sheet_row(photo.image, avatar.glb, 320)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("photos", nargs="*")
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = [Path(p) for p in args.photos] or sorted(
        p for folder in (REPO / "samples", REPO.parent / "shared" / "data" / "photos") if folder.is_dir()
        for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )  # fmt: skip
    body = load_body_model()
    rows = []
    for path in photos:
        try:
            row = sheet_row(path, body, args.baseline)
        except PipelineError as err:
            print(f"{path.name}: {err.code.value}", file=sys.stderr)
            continue
        cv2.imwrite(str(out / f"{path.stem}.png"), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
        rows.append(row)
        print(f"{path.name}: done", file=sys.stderr)
    if rows:
        width = max(r.shape[1] for r in rows)
        sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
        cv2.imwrite(str(out / "sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
