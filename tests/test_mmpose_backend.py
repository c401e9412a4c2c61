"""The "mmpose" pose backend: mmpose's own inference of the HRNet-W48 whole-body model.

mmpose (with full mmcv) is an optional, hard-to-build dependency (docs/install-mmpose.md): the
tests that run it skip when it cannot be imported. No trained checkpoint can be downloaded, so
they use the config's model with random weights, saved in the published file's layout.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cslr_pipe.features.pose import build_pose_backend
from cslr_pipe.features.pose.mmpose_backend import CHECKPOINT, INSTALL_HINT, MMPoseWholeBody


def test_missing_mmpose_is_a_one_line_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mmpose", None)  # `import mmpose` now raises ImportError
    monkeypatch.setitem(sys.modules, "mmpose.apis", None)
    with pytest.raises(ImportError) as error:
        build_pose_backend("mmpose", weights=tmp_path / "none.pth")
    message = str(error.value)
    assert INSTALL_HINT in message and "hrnet" in message and "\n" not in message


@pytest.fixture(scope="module")
def mmpose_stack():
    pytest.importorskip("mmpose")
    pytest.importorskip("mmcv.ops", reason="mmpose needs full mmcv with compiled ops")
    from mmpose.apis import init_model

    return init_model


@pytest.fixture(scope="module")
def checkpoint(mmpose_stack, tmp_path_factory):
    """The config's model with random weights, saved like the 2020 file (keypoint_head.*)."""
    import torch
    from cslr_pipe.features.pose.mmpose_backend import find_config, import_mmpose

    torch.manual_seed(0)
    model = mmpose_stack(str(find_config(import_mmpose()[0])), None, device="cpu")
    state = {("keypoint_head." + k[5:] if k.startswith("head.") else k): v
             for k, v in model.state_dict().items() if not k.startswith("data_preprocessor.")}
    path = tmp_path_factory.mktemp("weights") / CHECKPOINT
    torch.save({"meta": {"epoch": 210}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo (RGB, 512x600), matplotlib's grace_hopper.jpg."""
    cv2 = pytest.importorskip("cv2")
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        data = np.frombuffer(handle.read(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_missing_weights_names_the_file(mmpose_stack, tmp_path):
    from cslr_pipe.features.weights import MissingWeights

    with pytest.raises(MissingWeights, match=CHECKPOINT):
        MMPoseWholeBody(weights=tmp_path / "absent.pth")


def test_config_path_must_exist(mmpose_stack, checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.py"):
        MMPoseWholeBody(weights=checkpoint, config=tmp_path / "absent.py")


@pytest.mark.slow
def test_keypoints_shape_and_frame_pixels(checkpoint, photo):
    backend = build_pose_backend("mmpose", weights=checkpoint, device="cpu", flip_test=False)
    assert backend.name == "mmpose" and backend.weights == checkpoint
    frames = np.stack([photo, photo[:, ::-1]])
    keypoints = backend(frames)
    assert keypoints.shape == (2, 133, 3) and keypoints.dtype == np.float32
    found = keypoints[..., 2] > 0
    assert np.all(keypoints[~found] == 0)
    h, w = photo.shape[:2]  # the crop: the frame padded 1.25x, then widened to 3:4 (w:h)
    crop_w, crop_h = max(1.25 * w, 1.25 * h * 3 / 4), max(1.25 * h, 1.25 * w * 4 / 3)
    low = np.array([w - crop_w, h - crop_h]) / 2 - 1e-3
    xy = keypoints[found][:, :2]
    assert np.all(xy >= low) and np.all(xy <= np.array([w, h]) - low)
    backend.close()


@pytest.mark.slow
def test_same_keypoints_as_the_hrnet_backend(checkpoint, photo):
    """bench/compare_mmpose.py does this at length (flip test on and off, heatmaps, DARK)."""
    mmpose = build_pose_backend("mmpose", weights=checkpoint, device="cpu", flip_test=True)
    hrnet = build_pose_backend("hrnet", weights=checkpoint, device="cpu", flip_test=True)
    a, b = mmpose(photo[None]), hrnet(photo[None])
    both = (a[..., 2] > 0) & (b[..., 2] > 0)
    assert both.sum() >= 0.9 * max((a[..., 2] > 0).sum(), (b[..., 2] > 0).sum())
    assert np.abs(a[..., 2] - b[..., 2]).max() < 1e-4
    diff = np.abs(a[both][:, :2] - b[both][:, :2]).max(-1)  # frame pixels
    # Heatmaps agree to ~1e-5 and DARK to ~1e-4 px; a random model's flat heatmaps make some
    # DARK Newton steps ill-conditioned (steps of several pixels), where float32 rounding shows
    # as up to ~0.1 px (mmpose's own float32 and float64 decoding differ as much).
    assert np.quantile(diff, 0.9) < 1e-3 and diff.max() < 0.5
