"""Texture library: torcs-data photographs, the fallbacks, area-averaged sampling, the hash in the cache key."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from neural_sensor.reconstruct.cache import cache_key
from neural_sensor.scene import textures
from neural_sensor.scene.layout import straight_road
from neural_sensor.scene.textures import CLASSES, TORCS_CATALOGUE, Texture, load_library, torcs_root

HAVE_TORCS = all((torcs_root() / spec.path).is_file() for specs in TORCS_CATALOGUE.values() for spec in specs)
needs_torcs = pytest.mark.skipif(not HAVE_TORCS, reason="torcs-data is not installed (apt-get install torcs-data)")


@needs_torcs
def test_torcs_library_has_every_class_with_licences():
    library = load_library()
    assert library.source == "torcs"
    assert set(library.textures) == set(CLASSES)
    assert set(library.licences) <= {textures.FREE_ART, textures.GPL2} and textures.FREE_ART in library.licences
    for cls, options in library.textures.items():
        for tex in options:
            assert tex.image.dtype == np.float32 and tex.image.ndim == 3 and tex.image.shape[2] == 3
            assert 0.0 <= tex.image.min() and tex.image.max() <= 1.0 and tex.image.std() > 0.01  # a photograph
            assert all(t > 0 for t in tex.tile_m)
    assert all(t.alpha is not None for t in library.textures["tree"])  # trees are cut out


def test_fallback_without_torcs_is_procedural_with_a_notice(tmp_path, capsys):
    load_library.cache_clear()
    library = load_library(str(tmp_path), allow_skimage=False)
    assert library.source == "procedural" and set(library.textures) == set(CLASSES)
    err = capsys.readouterr().err
    assert f"no texture photographs found under {tmp_path}" in err and "NEURAL_SENSOR_TORCS" in err
    try:
        import skimage  # noqa: F401

        expected = "skimage"
    except ImportError:
        expected = "procedural"
    assert load_library(str(tmp_path), allow_skimage=True).source == expected
    tex = library.choose("facade", 1, 0)
    assert tex.sample(np.array([0.5]), np.array([0.5]), 0.1).shape == (1, 3)


def test_area_averaged_sampling():
    rng = np.random.default_rng(0)
    image = rng.random((64, 32, 3)).astype(np.float32)
    tex = Texture("t", image, (2.0, 4.0), "test")  # 16 px per metre both ways
    # a pixel centre with a tiny footprint returns that pixel; v = 0 is the bottom row
    u = (5 + 0.5) / 16.0
    v = (64 - 1 - 10 + 0.5) / 16.0
    np.testing.assert_allclose(tex.sample(np.array([u]), np.array([v]), 0.01)[0], image[10, 5], atol=1e-5)
    # a footprint as wide as the tile returns (about) the mean colour, wherever it is taken
    far = tex.sample(rng.uniform(0, 2, 50), rng.uniform(0, 4, 50), 4.0)
    np.testing.assert_allclose(far, np.broadcast_to(image.mean((0, 1)), far.shape), atol=0.05)
    # tiling: one tile further along gives the same colour
    np.testing.assert_allclose(tex.sample(np.array([u + 2.0]), np.array([v + 4.0]), 0.01)[0], image[10, 5], atol=1e-5)
    # detail: zero on a flat image, positive on a checkered one
    flat = Texture("f", np.full((32, 32, 3), 0.5, np.float32), (1.0, 1.0), "test")
    assert flat.detail(np.array([0.3]), np.array([0.3]), 0.25)[0] < 1e-3
    assert tex.detail(np.array([0.3]), np.array([0.3]), 0.5)[0] > 0.05


def test_choice_and_jitter_are_seeded():
    library = load_library()
    picks = [library.choose("facade", key, 7).name for key in range(40)]
    assert picks == [library.choose("facade", key, 7).name for key in range(40)]
    assert len(set(picks)) > 1
    jitter = library.jitter("facade", 3, 7, hue=0.03, brightness=0.1)
    grey = np.array([0.5, 0.5, 0.5], np.float32)
    out = jitter @ grey
    np.testing.assert_allclose(out, out.mean(), atol=1e-6)  # the hue turns about the grey axis
    assert 0.45 <= out.mean() <= 0.55
    np.testing.assert_array_equal(jitter, library.jitter("facade", 3, 7, hue=0.03, brightness=0.1))


@needs_torcs
def test_facade_family_narrows_the_choice():
    library = load_library()
    for family in ("office", "apartment", "old_town", "house"):
        names = {library.choose("facade", key, 1, family).family for key in range(20)}
        assert names == {family}


@needs_torcs
def test_hash_follows_the_files_and_enters_the_cache_key(tmp_path, monkeypatch):
    root = tmp_path / "torcs"
    for specs in TORCS_CATALOGUE.values():
        for spec in specs:
            (root / spec.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(torcs_root() / spec.path, root / spec.path)
    load_library.cache_clear()
    same = load_library(str(root))
    assert same.hash == load_library().hash  # the hash is of the content, not of where it lies
    target = root / TORCS_CATALOGUE["asphalt"][0].path
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # change one byte (the image still reads)
    target.write_bytes(bytes(data))
    load_library.cache_clear()
    changed = load_library(str(root))
    assert changed.source == "torcs" and changed.hash != same.hash
    # the build's cache key includes the library's hash
    from neural_sensor.scene import build

    layout = straight_road(20.0, buildings=False)
    key_before = cache_key(build.build_inputs(layout, 0.5))
    monkeypatch.setattr(textures, "load_library", lambda *a, **k: changed)
    key_after = cache_key(build.build_inputs(layout, 0.5))
    assert key_before != key_after
    assert cache_key(build.build_inputs(layout, 0.5, "legacy")) == cache_key(build.build_inputs(layout, 0.5, "legacy"))
    load_library.cache_clear()
