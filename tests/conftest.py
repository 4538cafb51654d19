"""Fixtures shared by several test files."""

import pytest

from neural_sensor.enhance.model import Enhancer, EnhancerConfig


@pytest.fixture(scope="module")
def identity_checkpoint(tmp_path_factory):
    """A small untrained enhancer: exactly the identity, so replies can be checked against the request."""
    folder = tmp_path_factory.mktemp("identity")
    Enhancer(EnhancerConfig(model_name="identity", block_out_channels=(8, 16), norm_num_groups=4)).save_pretrained(folder)
    return folder
