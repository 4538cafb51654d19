"""The street benchmark scene: exact counts, determinism, content."""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.labels import CityObjectLabel
from neural_sensor.testing import make_street_scene, street_cameras


@pytest.mark.parametrize("n", [1000, 10_000, 123_457])
def test_exact_count_and_labels(n):
    scene = make_street_scene(n, seed=0, sh_degree=2)
    assert len(scene) == n and scene.sh_degree == 2
    labels = set(np.unique(scene.labels).tolist())
    assert labels == {CityObjectLabel.ROADS, CityObjectLabel.SIDEWALKS, CityObjectLabel.BUILDING, CityObjectLabel.CAR}
    cars = scene.labels == CityObjectLabel.CAR
    assert (scene.instance[cars] > 0).all() and (scene.instance[~cars] == 0).all()


def test_seeded():
    a, b = make_street_scene(5000, seed=3), make_street_scene(5000, seed=3)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.sh, b.sh)
    c = make_street_scene(5000, seed=4)
    assert not np.array_equal(a.means, c.means)


def test_rig_cameras():
    cams = street_cameras(640, 360, count=6)
    assert len(cams) == 6
    forward = np.array([c.pose_camera_to_world[:3, 2] for c in cams])
    assert forward[0, 0] > 0.99 and forward[3, 0] < -0.99  # front and back
    with pytest.raises(ValueError, match="count must be 1..6"):
        street_cameras(64, 64, count=7)
    with pytest.raises(ValueError, match=">= 1000"):
        make_street_scene(10)
