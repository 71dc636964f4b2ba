"""Texture bake time, earlier mirror fill vs occlusion-aware region fill (issue 13).

`python benchmarks/texture_bench.py [N]`: N synthetic appearance subjects (default 6) from
models.eval_appearance, each baked at 1024 px with both methods after one warm-up bake
(the UV raster is cached per layout); prints per-method medians and the ratio as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from models.body_model import anny_topology, load_body_model
from models.eval_appearance import KINDS, make_subject
from models.texture import TextureConfig, bake_texture, body_layout


def main(n: int = 6) -> dict:
    body = load_body_model()
    topo = anny_topology(body.model)
    faces, uv, fuv = topo["faces"], topo["uv"], topo["face_uv_idx"]
    times: dict[str, list[float]] = {"mirror": [], "regions": []}
    for i in range(n):
        s = make_subject(body, i, KINDS[i % len(KINDS)])
        layout = body_layout(s.rest_vertices, faces, uv, fuv, topo["skin_indices"], topo["skin_weights"], list(body.model.bone_labels))
        configs = {"mirror": (TextureConfig(unseen_fill="mirror"), None), "regions": (TextureConfig(), layout)}
        for name, (config, lay) in configs.items():
            if i == 0 and name == "mirror":  # warm the UV raster cache
                bake_texture(s.fit_vertices, faces, uv, fuv, s.camera, s.photo, s.mask, config, layout=lay)
            start = time.perf_counter()
            bake_texture(s.fit_vertices, faces, uv, fuv, s.camera, s.photo, s.mask, config, layout=lay)
            times[name].append(time.perf_counter() - start)
    result = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result["ratio"] = round(result["regions"] / result["mirror"], 3)
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)))
