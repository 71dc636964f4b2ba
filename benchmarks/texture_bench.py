"""Texture bake time, earlier mirror fill vs occlusion-aware region fill (issue 13).

`python benchmarks/texture_bench.py [N] [REPEATS]`: N synthetic appearance subjects (default
6) from models.eval_appearance, each baked at 1024 px with both methods, REPEATS times
(default 3) in turn after one warm-up bake (the UV raster is cached per layout). The fastest
of the repeats counts (the shared machine's load only ever adds time); prints the medians
over subjects and their ratio as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from models.body_model import anny_topology, load_body_model
from models.eval_appearance import KINDS, make_subject
from models.texture import TextureConfig, bake_texture, body_layout


def main(n: int = 6, repeats: int = 3) -> dict:
    body = load_body_model()
    topo = anny_topology(body.model)
    faces, uv, fuv = topo["faces"], topo["uv"], topo["face_uv_idx"]
    times: dict[str, list[float]] = {"mirror": [], "regions": []}
    for i in range(n):
        s = make_subject(body, i, KINDS[i % len(KINDS)])
        layout = body_layout(s.rest_vertices, faces, uv, fuv, topo["skin_indices"], topo["skin_weights"], list(body.model.bone_labels))
        configs = {"mirror": (TextureConfig(unseen_fill="mirror"), None), "regions": (TextureConfig(), layout)}
        if i == 0:  # warm the UV raster cache
            bake_texture(s.fit_vertices, faces, uv, fuv, s.camera, s.photo, s.mask, configs["mirror"][0])
        best = {name: float("inf") for name in configs}
        for _ in range(repeats):
            for name, (config, lay) in configs.items():
                start = time.perf_counter()
                bake_texture(s.fit_vertices, faces, uv, fuv, s.camera, s.photo, s.mask, config, layout=lay)
                best[name] = min(best[name], time.perf_counter() - start)
        for name, seconds in best.items():
            times[name].append(seconds)
    result = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result["ratio"] = round(result["regions"] / result["mirror"], 3)
    return result


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(main(*args)))
