"""Shared by the enhancer server's tests: small random frames as a rig sends them."""

import numpy as np


def frames(seed, n=3, h=24, w=40):
    """n frames of h x w: rgb in [0, 1), depth in [0, 30) m, alpha 1, camera ids cam0..."""
    rng = np.random.default_rng(seed)
    return [{"camera": f"cam{i}", "rgb": rng.integers(0, 256, (h, w, 3)).astype(np.float32) / 255,
             "depth": rng.random((h, w)).astype(np.float32) * 30, "alpha": np.ones((h, w), np.float32)}
            for i in range(n)]
