"""Optical flow backends (features/flow/), streaming (flow.iter_flow) and storage (features/codecs.py).

Motion tests use a real photo that ships with matplotlib (grace_hopper.jpg) and a second frame
made from it by a known sub-pixel warp, so the true flow is known everywhere.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook

from cslr_pipe.features import codecs as C, flow as F
from cslr_pipe.features.flow import iter_flow
from cslr_pipe.features.flow.opencv import DISFlow
from cslr_pipe.features.flow.raft import RAFTSmall, raft_padding
from cslr_pipe.features.store import Provenance, ShardWriter, open_cache, sha256_file, write_index
from cslr_pipe.features.weights import CheckpointError, MissingWeights

SIZE = 160
INNER = slice(20, SIZE - 20)  # evaluated away from the borders the warp had to invent


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 160x160 RGB crop of grace_hopper.jpg (face and uniform: real texture)."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {path}"
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image[150:150 + SIZE, 200:200 + SIZE])


def warp(image: np.ndarray, matrix: np.ndarray, interpolation=cv2.INTER_CUBIC) -> np.ndarray:
    """second(p) = image(M^-1 p): the flow from image to the result is M p - p."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT)


def motion(kind, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(2x3 affine, true flow [2, H, W]) for a translation (dx, dy) or 'zoom' (1.03 about the centre)."""
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    if kind == "zoom":
        s, c = 1.03, (size - 1) / 2
        matrix = np.array([[s, 0, (1 - s) * c], [0, s, (1 - s) * c]])
        return matrix, np.stack([(s - 1) * (xs - c), (s - 1) * (ys - c)])
    dx, dy = kind
    return np.array([[1.0, 0, dx], [0, 1.0, dy]]), np.stack([np.full_like(xs, dx), np.full_like(ys, dy)])


def epe(flow: np.ndarray, truth: np.ndarray) -> float:
    """Mean end-point error over the inner region."""
    return float(np.linalg.norm(flow[:, INNER, INNER] - truth[:, INNER, INNER], axis=0).mean())


MOTIONS = [(1.5, -0.75), (3.25, 2.0), (5.0, 0.0), "zoom"]


@pytest.mark.parametrize("name", ["dis", "farneback"])
@pytest.mark.parametrize("kind", MOTIONS, ids=lambda k: k if isinstance(k, str) else f"{k[0]}_{k[1]}")
def test_classical_backends_recover_known_motion(photo, name, kind):
    matrix, truth = motion(kind)
    interpolation = cv2.INTER_LINEAR if kind == (3.25, 2.0) else cv2.INTER_CUBIC
    second = warp(photo, matrix, interpolation)
    with F.build_flow_backend(name) as backend:
        flow = backend(photo[None], second[None])
    assert flow.shape == (1, 2, SIZE, SIZE) and flow.dtype == np.float32
    assert epe(flow[0], truth) < 0.3
    # the sign convention: first(p) ~ second(p + flow(p)); the reverse pair gives the opposite
    mean = flow[0][:, INNER, INNER].reshape(2, -1).mean(1)
    np.testing.assert_allclose(mean, truth[:, INNER, INNER].reshape(2, -1).mean(1), atol=0.1)
    assert epe(flow[0], -truth) > 1.0


def test_backward_warp_with_the_flow_reproduces_the_first_frame(photo):
    matrix, _ = motion((3.25, 2.0))
    second = warp(photo, matrix)
    flow = F.build_flow_backend("dis")(photo[None], second[None])[0]
    ys, xs = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    back = cv2.remap(second, xs + flow[0], ys + flow[1], cv2.INTER_LINEAR)
    error = np.abs(back.astype(float) - photo)[INNER, INNER].mean()
    assert error < 0.25 * np.abs(second.astype(float) - photo)[INNER, INNER].mean()


def test_registry_options_and_errors(photo):
    assert {"dis", "farneback", "raft-small", "raft-large"} <= set(F.flow_backend_names())
    with pytest.raises(ValueError, match="unknown flow backend 'nope'"):
        F.build_flow_backend("nope")
    with pytest.raises(ValueError, match="preset"):
        F.build_flow_backend("dis", preset="slow")
    with pytest.raises(ValueError, match="unknown DIS options"):
        F.build_flow_backend("dis", windowsize=3)
    with pytest.raises(ValueError, match="unknown Farneback"):
        F.build_flow_backend("farneback", window=3)
    with pytest.raises(ValueError, match="no weights"):
        F.build_flow_backend("dis", weights="x.pth")
    assert DISFlow.locate_weights(None) is None
    fast = F.build_flow_backend("dis", preset="ultrafast", finest_scale=1)
    assert fast(photo[None], photo[None]).shape == (1, 2, SIZE, SIZE)
    with pytest.raises(ValueError, match="uint8"):
        fast(photo[None].astype(np.float32), photo[None].astype(np.float32))

    class Zero(F.FlowBackend):
        name = "zero"

        def __init__(self, weights=None, device="cpu", value=0.0):
            self.value = value

        def __call__(self, first, second):
            return np.full((len(first), 2, *first.shape[1:3]), self.value, np.float32)

    F.register_flow_backend("zero", Zero)
    try:
        assert "zero" in F.flow_backend_names()
        assert F.build_flow_backend("zero", value=2.0)(photo[None], photo[None]).max() == 2.0
    finally:
        F.BACKENDS.unregister("zero")


# ---------------------------------------------------------------------------------------------
# Streaming


def moving_frames(photo: np.ndarray, count: int, size: int = 48) -> np.ndarray:
    """``count`` frames [size, size] of the photo drifting by a different sub-pixel step each."""
    frames = []
    for t in range(count):
        matrix = np.array([[1.0, 0, 0.7 * t], [0, 1.0, -0.4 * t + 0.1 * t * t]])
        frames.append(warp(photo, matrix)[40:40 + size, 40:40 + size])
    return np.ascontiguousarray(np.stack(frames))


class Recorder:
    """Wraps a backend and records how many pairs each call got."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __call__(self, first, second):
        self.calls.append(len(first))
        return self.backend(first, second)


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("batch", [1, 4, 64])
def test_iter_flow_matches_all_pairs_at_once(photo, chunk, batch):
    frames = moving_frames(photo, 12)
    backend = F.build_flow_backend("dis")
    whole = backend(frames[:-1], frames[1:])
    recorder = Recorder(backend)
    chunks = (frames[i:i + chunk] for i in range(0, len(frames), chunk))
    parts = list(iter_flow(recorder, chunks, batch=batch))
    assert sum(len(p) for p in parts) == len(frames) - 1
    assert max(recorder.calls) <= batch
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_iter_flow_edge_cases(photo):
    backend = F.build_flow_backend("dis")
    frames = moving_frames(photo, 3)
    assert list(iter_flow(backend, [frames[:1]])) == []  # one frame: no flow
    assert list(iter_flow(backend, [])) == []
    parts = list(iter_flow(backend, [frames[:0], frames[:1], frames[:0], frames[1:]]))
    np.testing.assert_array_equal(np.concatenate(parts), backend(frames[:-1], frames[1:]))
    with pytest.raises(ValueError, match="after frames"):
        list(iter_flow(backend, [frames, frames[:, :10]]))
    with pytest.raises(ValueError, match="batch"):
        list(iter_flow(backend, [frames], batch=0))


# ---------------------------------------------------------------------------------------------
# Storage


@pytest.fixture(scope="module")
def real_flow(photo) -> np.ndarray:
    """DIS flow of three real motions, the last scaled so that some of it exceeds +-20 px."""
    fields = []
    dis = F.build_flow_backend("dis")
    for kind in [(3.25, 2.0), "zoom", (5.0, 0.0)]:
        matrix, _ = motion(kind)
        fields.append(dis(photo[None], warp(photo, matrix)[None])[0])
    fields[-1] = fields[-1] * 5 + np.linspace(-3, 3, SIZE, dtype=np.float32)
    return np.stack(fields)


def expected_after_clipping(flow: np.ndarray, storage: str, bound: float) -> np.ndarray:
    if storage == "uint8":
        return np.clip(flow, -bound, bound)
    if storage == "rgb":
        norm = np.linalg.norm(flow, axis=1, keepdims=True)
        return flow * np.minimum(1, bound / np.maximum(norm, 1e-12))
    return flow


def check_round_trip(flow, decoded, storage, attrs, bound):
    assert decoded.shape == flow.shape and decoded.dtype == np.float32
    reference = expected_after_clipping(flow, storage, bound)
    if storage == "uint8":  # per component: half a step of bound / 127
        assert np.abs(decoded - reference).max() <= bound / 254 + 1e-5
    elif storage == "float16":
        assert np.abs(decoded - reference).max() <= np.abs(reference).max() * 2.0 ** -11 + 1e-6
    else:
        errors = np.linalg.norm(decoded - reference, axis=1).reshape(len(flow), -1).max(1)
        limits = [C.rgb_error_bound(m) for m in attrs["max_norm"]]
        assert (errors <= limits).all(), (errors, limits)


@pytest.mark.parametrize("storage", C.STORAGES)
@pytest.mark.parametrize("bound", [20.0, 8.0])
def test_storage_round_trip_in_memory(real_flow, storage, bound):
    array, attrs = C.encode_flow(real_flow, storage, bound)
    expected_shape = real_flow.shape if storage != "rgb" else (len(real_flow), SIZE, SIZE, 3)
    assert array.shape == expected_shape
    assert array.dtype == {"uint8": np.uint8, "float16": np.float16, "rgb": np.uint8}[storage]
    check_round_trip(real_flow, C.decode_flow(array, attrs), storage, attrs, bound)


def test_uint8_keeps_zero_exact_and_uses_the_generic_linear_decoder():
    flow = np.zeros((2, 2, 4, 5), np.float32)
    flow[0, 0, 0, :] = [-25, -20, 0, 20, 25]
    codes, attrs = C.encode_flow(flow, "uint8", 20.0)
    assert attrs["encoding"] == "linear"
    assert codes[1].min() == codes[1].max() == 128
    decoded = C.decode_flow(codes, attrs)
    assert (decoded[1] == 0).all()
    np.testing.assert_allclose(decoded[0, 0, 0], [-20, -20, 0, 20, 20], atol=1e-5)


def test_rgb_worst_case_error_on_random_flow():
    rng = np.random.default_rng(0)
    flow = rng.uniform(-12, 12, (3, 2, 96, 96)).astype(np.float32)
    flow[2] *= 0.01  # tiny motion: the norm is still found
    images, attrs = C.encode_flow(flow, "rgb", 20.0)
    decoded = C.decode_flow(images, attrs)
    check_round_trip(flow, decoded, "rgb", attrs, 20.0)
    assert attrs["max_norm"].dtype == np.float16
    assert (attrs["max_norm"].astype(np.float32) >= np.linalg.norm(flow, axis=1).reshape(3, -1).max(1)).all()


def test_rgb_looks_like_torchvision_flow_to_image(real_flow):
    from torchvision.utils import flow_to_image

    for field in real_flow:
        theirs = flow_to_image(torch.from_numpy(np.ascontiguousarray(field))).permute(1, 2, 0).numpy()
        ours = C.flow_to_color(field)
        assert ours.shape == (SIZE, SIZE, 3) and ours.dtype == np.uint8
        assert np.abs(theirs.astype(int) - ours).max() <= 1
    # stored images (norm rounded up to float16) differ from the picture by at most a level
    images, _ = C.encode_flow(real_flow[:2], "rgb", bound=1000.0)
    assert np.abs(images.astype(int) - C.flow_to_color(real_flow[:2])).max() <= 1
    fixed = C.flow_to_color(real_flow, max_norm=5.0)
    assert fixed.shape == (3, SIZE, SIZE, 3)


@pytest.mark.parametrize("storage", C.STORAGES)
def test_storage_round_trip_through_the_store(tmp_path, real_flow, storage):
    stage = tmp_path / "cache" / "flow"
    chunks, attrs = C.iter_encode_flow(iter([real_flow[:1], real_flow[1:]]), storage)
    with ShardWriter(stage, 0, ["v"], Provenance("flow", "dis", {"storage": storage})) as writer:
        writer.write("v", {"flow": chunks}, attrs={"flow": attrs})
        writer.commit()
    write_index(stage)
    whole, whole_attrs = C.encode_flow(real_flow, storage)
    if storage == "rgb":
        np.testing.assert_array_equal(attrs["max_norm"], whole_attrs["max_norm"])
    decoded = open_cache(tmp_path / "cache").read("v")["flow"]
    np.testing.assert_array_equal(decoded, C.decode_flow(whole, whole_attrs))
    check_round_trip(real_flow, decoded, storage, whole_attrs, C.DEFAULT_BOUND)


def test_rgb_is_read_without_importing_the_flow_package(tmp_path, real_flow):
    images, attrs = C.encode_flow(real_flow, "rgb")
    with ShardWriter(tmp_path / "flow", 0, ["v"], Provenance("flow", "dis", {})) as writer:
        writer.write("v", {"flow": images}, attrs={"flow": attrs})
        writer.commit()
    np.save(tmp_path / "expected.npy", C.decode_flow(images, attrs))
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from cslr_pipe.features.store import open_cache
        assert not any(name.startswith("cslr_pipe.features.flow") for name in sys.modules)
        flow = open_cache({str(tmp_path)!r}).read("v")["flow"]
        np.testing.assert_array_equal(flow, np.load({str(tmp_path / 'expected.npy')!r}))
        assert "torch" not in sys.modules and "cv2" not in sys.modules
        assert not any(name.startswith("cslr_pipe.features.flow") for name in sys.modules)
        print("ok", flow.shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ok (3, 2, 160, 160)" in result.stdout


def test_encode_rejects_bad_input(real_flow):
    with pytest.raises(ValueError, match="storage"):
        C.encode_flow(real_flow, "png")
    with pytest.raises(ValueError, match="bound"):
        C.encode_flow(real_flow, "uint8", bound=0)
    with pytest.raises(ValueError, match="flow"):
        C.encode_flow(real_flow[:, :1])


# ---------------------------------------------------------------------------------------------
# RAFT (random weights in torchvision's layout: the compute and file handling of the real ones)


def save_random_raft(folder, architecture: str, stem: str):
    """Random weights named like torchvision's file ``<stem>-<hash>.pth`` with their own sha256
    prefix (under the published name itself they are refused: tests/test_weights.py)."""
    from torchvision.models import optical_flow

    torch.manual_seed(0)
    model = getattr(optical_flow, architecture)(weights=None, progress=False)
    saved = folder / f"{stem}.tmp"
    torch.save(model.state_dict(), saved)
    path = saved.rename(folder / f"{stem}-{sha256_file(saved)[:8]}.pth")
    return path, model.eval()


@pytest.fixture(scope="module")
def raft_small_file(tmp_path_factory):
    return save_random_raft(tmp_path_factory.mktemp("raft"), "raft_small", "raft_small_C_T_V2")


def test_raft_padding():
    assert raft_padding(70, 101) == (29, 29, 13, 14)  # -> 128 x 128
    assert raft_padding(130, 97) == (3, 3, 15, 16)  # -> 136 x 128
    assert raft_padding(224, 224) == (0, 0, 0, 0)
    assert raft_padding(260, 210) == (2, 2, 3, 3)  # PHOENIX frames -> 264 x 216


@pytest.mark.parametrize("height, width, pairs", [(70, 101, 2), (130, 97, 1)])
def test_raft_small_end_to_end_on_odd_sizes(photo, raft_small_file, height, width, pairs):
    path, model = raft_small_file
    backend = F.build_flow_backend("raft-small", weights=path, num_updates=2, batch_size=1)
    assert backend.weights == path and backend.precision == "fp32"
    first = np.ascontiguousarray(np.stack([photo[:height, :width], photo[-height:, -width:]])[:pairs])
    second = np.roll(first, 2, axis=2)
    flow = backend(first, second)  # one pair per forward pass
    assert flow.shape == (pairs, 2, height, width) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
    # the same as torchvision's model on the edge-padded frames (all pairs in one pass), cropped back
    top, bottom, left, right = raft_padding(height, width)
    images = torch.from_numpy(np.concatenate([first, second])).permute(0, 3, 1, 2).float() / 127.5 - 1
    images = torch.nn.functional.pad(images, (left, right, top, bottom), mode="replicate")
    assert images.shape[-2] % 8 == 0 and images.shape[-1] % 8 == 0 and min(images.shape[-2:]) >= 128
    with torch.inference_mode():
        direct = model(images[:pairs], images[pairs:], num_flow_updates=2)[-1]
    direct = direct[:, :, top:top + height, left:left + width].numpy()
    np.testing.assert_allclose(flow, direct, atol=1e-3 * max(1.0, np.abs(direct).max()))
    backend.close()


def test_raft_autocast_keeps_the_correlation_in_fp32(photo, raft_small_file):
    path, _ = raft_small_file
    first = np.ascontiguousarray(photo[None, :128, :128])
    second = np.roll(first, 2, axis=2)
    fp32 = F.build_flow_backend("raft-small", weights=path, num_updates=1)(first, second)
    backend = F.build_flow_backend("raft-small", weights=path, num_updates=1, precision="bf16")
    block, seen = backend.model.corr_block, []
    build, volume = block.build_pyramid, block._compute_corr_volume
    block.build_pyramid = lambda a, b: (seen.append(("features", a.dtype)), build(a, b))[1]
    block._compute_corr_volume = lambda a, b: (lambda v: (seen.append(("correlation", v.dtype)), v)[1])(volume(a, b))
    half = backend(first, second)
    assert not torch.is_autocast_enabled("cpu")  # left as it was
    # the encoders ran in bf16, the correlation volume in fp32
    assert seen == [("features", torch.bfloat16), ("correlation", torch.float32)]
    assert block.corr_pyramid[0].numel() == 1  # released after the pass
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert np.abs(half - fp32).max() <= 0.05 * max(1.0, np.abs(fp32).max())  # ... the rest close to fp32


def test_raft_large_end_to_end_and_strict_loading(photo, tmp_path, raft_small_file):
    path, _ = save_random_raft(tmp_path, "raft_large", "raft_large_C_T_SKHT_V2")
    backend = F.build_flow_backend("raft-large", weights=path, num_updates=1)
    first = np.ascontiguousarray(photo[None, :70, :101])
    flow = backend(first, np.roll(first, 1, axis=1))
    assert flow.shape == (1, 2, 70, 101) and np.isfinite(flow).all()
    # another architecture's file is refused, naming the right files
    with pytest.raises(CheckpointError, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
        F.build_flow_backend("raft-large", weights=raft_small_file[0])
    # a file with a missing tensor is refused (strict loading)
    state = torch.load(raft_small_file[0], weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not a torchvision raft_small state dict"):
        F.build_flow_backend("raft-small", weights=tmp_path / "partial.pth")


def test_raft_weights_found_in_the_hub_cache_or_missing(tmp_path, monkeypatch, raft_small_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeights, match="raft_small_C_T_V2-01064c6d.pth") as missing:
        F.build_flow_backend("raft-small")
    assert "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth" in str(missing.value)
    with pytest.raises(MissingWeights, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
        F.build_flow_backend("raft-large")
    with pytest.raises(MissingWeights, match="elsewhere.pth"):
        F.build_flow_backend("raft-small", weights=tmp_path / "elsewhere.pth")
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    published = checkpoints / "raft_small_C_T_V2-01064c6d.pth"
    published.write_bytes(raft_small_file[0].read_bytes())
    assert RAFTSmall.locate_weights(None) == published
    with pytest.raises(CheckpointError, match="01064c6d"):  # found, and not torchvision's file
        F.build_flow_backend("raft-small")
    # the hub cache holding the file a record names is where weights=None loads it from
    own = dataclasses.replace(RAFTSmall.published(), file=raft_small_file[0].name)
    monkeypatch.setattr(RAFTSmall, "published", classmethod(lambda cls: own))
    (checkpoints / own.file).write_bytes(raft_small_file[0].read_bytes())
    backend = F.build_flow_backend("raft-small", num_updates=1)
    assert backend.weights == checkpoints / own.file
    with pytest.raises(ValueError, match="precision"):
        F.build_flow_backend("raft-small", precision="fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_raft_on_cuda_with_autocast(photo, raft_small_file):
    path, _ = raft_small_file
    first = np.ascontiguousarray(np.stack([photo[:130, :97]] * 3))
    second = np.roll(first, 2, axis=2)
    cpu = F.build_flow_backend("raft-small", weights=path, num_updates=2)(first, second)
    fp32 = F.build_flow_backend("raft-small", weights=path, device="cuda", num_updates=2,
                                precision="fp32")(first, second)
    np.testing.assert_allclose(fp32, cpu, atol=1e-2 * max(1.0, np.abs(cpu).max()))
    half = F.build_flow_backend("raft-small", weights=path, device="cuda", num_updates=2)
    assert half.precision == "fp16"
    flow = half(first, second)
    assert flow.shape == first.shape[:1] + (2, 130, 97) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
