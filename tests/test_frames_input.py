"""One input type for frames across the deploy stages (``as_frames``): numpy arrays and torch
tensors of any bool, integer or float dtype holding whole spike counts give the same uint8
frames and the same outputs; anything else is one FramesError."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sast_deploy.data.frames import FramesError, as_frames
from sast_deploy.deploy.emulator import emulate, emulate_counts
from sast_deploy.deploy.export import write_netx
from sast_deploy.deploy.simulate import simulate_lava

from helpers import random_mlp, random_spikes

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = (np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64)
shapes = hnp.array_shapes(min_dims=3, max_dims=5, min_side=1, max_side=4)


@SETTINGS
@given(counts=hnp.arrays(np.uint8, shapes, elements=st.integers(0, 1)), dtype=st.sampled_from(DTYPES),
       as_torch=st.booleans(), contiguous=st.booleans())
def test_every_dtype_and_container_gives_the_same_uint8_frames(counts, dtype, as_torch, contiguous):
    frames = counts.astype(dtype)
    if not contiguous:  # a strided view (every other sample), as slicing gives
        frames = np.repeat(frames, 2, axis=0)[::2]
    x = as_frames(torch.from_numpy(frames) if as_torch else frames)
    assert x.dtype == torch.uint8 and x.device.type == "cpu"
    np.testing.assert_array_equal(x.numpy(), counts)


@SETTINGS
@given(frames=st.one_of(
    hnp.arrays(st.sampled_from((np.int16, np.int64)), shapes, elements=st.integers(-300, 300)),
    hnp.arrays(st.sampled_from((np.float32, np.float64)), shapes,
               elements=st.one_of(st.sampled_from((0.0, 1.0, 2.0, float("nan"), float("inf"))), st.floats(-300, 300, width=32)))))
def test_values_outside_whole_counts_are_one_frames_error(frames):
    valid = np.all(np.isfinite(frames)) and np.all(frames == np.round(frames)) and frames.min() >= 0 and frames.max() <= 255
    if valid:
        np.testing.assert_array_equal(as_frames(frames).numpy(), frames.astype(np.uint8))
    else:
        with pytest.raises(FramesError, match="whole numbers of spikes in 0..255"):
            as_frames(frames)


def test_shapes_the_network_takes():
    x = np.ones((2, 3, 2, 4, 5), dtype=np.uint8)
    assert as_frames(x, (2, 4, 5)).shape == (2, 3, 2, 4, 5)
    assert as_frames(x.reshape(2, 3, 40), (2, 4, 5)).shape == (2, 3, 2, 4, 5)  # flat: the dataset's row-major order
    assert as_frames(x, (40,)).shape == (2, 3, 40)  # a dense first layer without a recorded (P, H, W)
    for bad, shape in ((x, (2, 5, 4)), (x.reshape(2, 3, 5, 8), (2, 4, 5)), (x, (41,)), (x[0, 0, 0], None)):
        with pytest.raises(FramesError):
            as_frames(bad, shape)
    with pytest.raises(FramesError, match="numeric"):
        as_frames(np.array([[["a"]]]))
    with pytest.raises(FramesError, match="0..127"):
        as_frames(np.full((1, 1, 1), 128), max_value=127)


def test_emulate_and_lava_take_the_same_frames_in_any_form(tmp_path):
    qnet = random_mlp(0, (24, 12, 5), (300, 400), (410, 0))
    spikes = random_spikes(0, 6, 10, (1, 1, 24))
    forms = [spikes, spikes.astype(bool), torch.from_numpy(spikes).float(), torch.from_numpy(spikes).reshape(6, 10, 24)]
    expected = emulate_counts(qnet, torch.from_numpy(spikes)).numpy()
    assert expected.sum() > 0
    for form in forms:
        np.testing.assert_array_equal(emulate(qnet, form).counts.numpy(), expected)
    net = write_netx(qnet, tmp_path / "net.h5")
    np.testing.assert_array_equal(simulate_lava(net, forms[2], progress=False).counts, expected)  # a float tensor
    with pytest.raises(FramesError, match="0..127"):  # Lava's source holds int8
        simulate_lava(net, spikes * 200, progress=False)
