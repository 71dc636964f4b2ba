"""Science layer: photo normalisation, keypoints, body models, fitting, texture, rigging, glTF.

Pure numpy/torch/trimesh code, usable from a notebook: nothing here imports Dagster, AWS or
the storage layer.
"""
