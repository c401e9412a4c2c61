"""Frozen backbones: shapes, determinism, freezing, weight files, cross-modality init, streaming."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torchvision

from cslr_pipe.features.backbones import (Backbone, RandomWeightsWarning, backbone_factory, backbone_names,
                                          build_backbone, cross_modality_init, register_backbone)
from cslr_pipe.features.store import sha256_file
from cslr_pipe.features.weights import CheckpointError, MissingWeights

pytestmark = pytest.mark.filterwarnings("ignore::cslr_pipe.features.backbones.RandomWeightsWarning")

T = 10
SMALL = {"resize": (40, 40), "crop": 32, "heatmap_size": 32}  # tiny network inputs, fast on the CPU
FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth", "s3d": "s3d-d76dad2f.pth"}
DIMS = {"resnet18": 512, "resnet34": 512, "s3d": 1024}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs: one intra-op thread is as fast and does not spin on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def video(stream: str, frames: int = T, seed: int = 0) -> np.ndarray:
    """A tiny stream: rgb [n, 64, 80, 3] uint8, heatmaps [n, 79, 32, 32], flow [n, 2, 64, 80] px."""
    rng = np.random.default_rng(seed)
    if stream == "rgb":
        return rng.integers(0, 256, (frames, 64, 80, 3), np.uint8)
    if stream == "keypoint":
        return rng.random((frames, 79, 32, 32), np.float32) ** 8  # mostly near 0, as heatmaps are
    return rng.normal(0, 5, (frames, 2, 64, 80)).astype(np.float32)


def chunked(array: np.ndarray, size: int) -> list[np.ndarray]:
    return [array[i:i + size] for i in range(0, len(array), size)]


def build(name: str, stream: str = "rgb", weights="none", **options) -> Backbone:
    return build_backbone(name, stream, weights=weights, batch_size=4, **{**SMALL, **options})


@functools.lru_cache(maxsize=None)
def random_backbone(name: str, stream: str = "rgb") -> Backbone:
    """One randomly initialised backbone per (name, stream), shared by the tests (read-only)."""
    return build(name, stream)


def save_torchvision(name: str, path, seed: int):
    """A weights file in torchvision's published layout (the architecture with random values)."""
    torch.manual_seed(seed)
    builder = torchvision.models.video.s3d if name == "s3d" else getattr(torchvision.models, name)
    model = builder(weights=None)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def named_by_hash(path):
    """The file renamed like torchvision's (``<architecture>-<sha256 prefix>.pth``) with its own hash."""
    return path.rename(path.with_name(f"{path.stem}-{sha256_file(path)[:8]}.pth"))


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Per architecture: two files (seeds 1 and 2) named like torchvision's with their own hash
    prefix, and the first one's state dict."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name in FILES:
        (root / "1").mkdir(exist_ok=True), (root / "2").mkdir(exist_ok=True)
        state = save_torchvision(name, root / "1" / f"{name}.pth", seed=1)
        save_torchvision(name, root / "2" / f"{name}.pth", seed=2)
        out[name] = (named_by_hash(root / "1" / f"{name}.pth"), named_by_hash(root / "2" / f"{name}.pth"), state)
    return out


@pytest.mark.parametrize("name,stream", [("resnet18", "rgb"), ("resnet18", "keypoint"), ("resnet18", "flow"),
                                         ("resnet34", "rgb"), ("s3d", "rgb"), ("s3d", "keypoint"),
                                         ("s3d", "flow")])
def test_shapes_determinism_and_frozen(name, stream):
    backbone = random_backbone(name, stream)
    assert (backbone.name, backbone.stream, backbone.dim) == (name, stream, DIMS[name])
    assert backbone.random_init and backbone.weights is None
    outputs = []
    hook = backbone.model.register_forward_hook(lambda module, args, out: outputs.append(out))
    clip = video(stream)
    first, second = backbone.features([clip]), backbone.features([clip])
    hook.remove()
    steps = T if backbone.temporal_stride == 1 else -(-T // 8)
    assert first.shape == (steps, DIMS[name]) and first.dtype == np.float32
    assert np.isfinite(first).all() and first.std() > 0
    np.testing.assert_array_equal(first, second)
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    hooked = [o for o in outputs if isinstance(o, torch.Tensor)]
    assert all(o.grad_fn is None and not o.requires_grad and torch.is_inference(o) for o in hooked)
    assert backbone.features([]).shape == (0, DIMS[name])


@pytest.mark.parametrize("stream", ["rgb", "keypoint", "flow"])
def test_per_frame_features_do_not_depend_on_chunking(stream):
    backbone = random_backbone("resnet18", stream)  # resnet34: the same code
    clip = video(stream, frames=11)
    whole = backbone.features([clip])
    for size in (1, 3, 7):
        np.testing.assert_array_equal(backbone.features(chunked(clip, size)), whole)
    alone = np.concatenate([backbone.features([frame[None]]) for frame in clip[:3]])
    np.testing.assert_allclose(alone, whole[:3], rtol=1e-4, atol=1e-5)  # a frame's feature is its own


def test_s3d_streaming_windows():
    clip = video("rgb", frames=75)  # 10 steps, the last padded by repeating frame 74
    padded = np.concatenate([clip, clip[-1:].repeat(5, 0)])
    windowed = build("s3d", window=64, context=8)  # clips [0, 72) then [56, 80)
    whole = windowed.features([clip])
    assert whole.shape == (10, 1024)
    for size in (1, 7):  # chunking never matters
        np.testing.assert_array_equal(windowed.features(chunked(clip, size)), whole)
    single = build("s3d", window=80, context=0)  # a video of <= window frames: one clip
    reference = single.features([clip])
    with torch.inference_mode():
        x = single._normalise(single._prepare(padded).permute(1, 0, 2, 3)[None])  # [1, 3, 80, 32, 32]
        direct = single.model.features(x).mean(dim=(3, 4))[0].T.numpy()  # [10, 1024]
    np.testing.assert_allclose(reference, direct, rtol=1e-5, atol=1e-6)
    scale = np.abs(reference).max()
    assert np.abs(whole - reference).max() > 1e-3 * scale  # a short context changes steps near seams
    full_context = build("s3d", window=64, context=48).features(chunked(clip, 7))  # clips [0, 80), [16, 80)
    np.testing.assert_allclose(full_context, reference, rtol=0, atol=1e-4 * scale)  # the net's whole reach


@pytest.mark.parametrize("name", list(FILES))
def test_torchvision_files_load_strictly(name, weight_files, tmp_path, monkeypatch):
    first, second, state = weight_files[name]
    backbone = build(name, weights=first)
    assert backbone.weights == first and not backbone.random_init
    loaded = backbone.model.state_dict()
    head = "fc." if name != "s3d" else "classifier."
    assert set(loaded) == {k for k in state if not k.startswith(head)}
    assert all(torch.equal(value, state[key]) for key, value in loaded.items())
    clip = video("rgb", frames=8)
    features = backbone.features([clip])
    assert not np.allclose(features, build(name, weights=second).features([clip]))
    # weights=None: the published file in the hub cache; there, another file under its name is refused
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / FILES[name]).symlink_to(first)
    with pytest.raises(CheckpointError, match=f"{FILES[name]}: refused: its name says its sha256 starts with "
                                              f"{FILES[name][-12:-4]}"):
        build(name, weights=None)
    # ... and the file a record names is loaded from there
    cls = backbone_factory(name)
    own = dataclasses.replace(cls.published(), file=first.name)
    monkeypatch.setattr(cls, "published", classmethod(lambda cls: own))
    (checkpoints / first.name).symlink_to(first)
    cached = build(name, weights=None)
    assert cached.weights == checkpoints / first.name
    np.testing.assert_array_equal(cached.features([clip]), features)


@pytest.mark.parametrize("name,stem", [("resnet18", "conv1.weight"), ("s3d", "features.0.0.0.weight")])
@pytest.mark.parametrize("stream,channels", [("keypoint", 79), ("flow", 2)])
def test_cross_modality_init(name, stem, stream, channels, weight_files, tmp_path):
    path, _, state = weight_files[name]
    backbone = build(name, stream, weights=path)
    weight = backbone.model.state_dict()[stem]
    expected = state[stem].mean(dim=1, keepdim=True).expand(-1, channels, *state[stem].shape[2:])
    assert weight.shape[1] == channels
    torch.testing.assert_close(weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(cross_modality_init(state[stem], channels), expected, rtol=0, atol=0)
    if stream == "flow":
        return
    # A CSLR checkpoint whose stem already takes this stream loads as it is.
    trained = build(name, stream, seed=5)
    torch.save({"state_dict": trained.model.state_dict()}, tmp_path / "cslr.pt")
    reloaded = build(name, stream, weights=tmp_path / "cslr.pt")
    clip = video(stream, frames=8)
    np.testing.assert_array_equal(reloaded.features([clip]), trained.features([clip]))
    with pytest.raises(CheckpointError, match="2-channel stem"):  # a keypoint stem cannot read flow
        build(name, "flow", weights=tmp_path / "cslr.pt")


def test_flow_and_heatmap_preparation():
    backbone = build("resnet18", "flow", resize=(80, 80), crop=80, flow_scale=20.0)
    flow = np.zeros((1, 2, 40, 80), np.float32)
    flow[:, 0], flow[:, 1] = 4.0, 3.0  # px in a 40x80 frame
    prepared = backbone._prepare(flow)  # resized to 80x80: y doubles; / 20 px
    assert prepared.shape == (1, 2, 80, 80)
    torch.testing.assert_close(prepared[0, :, 40, 40], torch.tensor([0.2, 0.3]))
    assert backbone._prepare(flow * 100).abs().max() == 1  # clipped to +-flow_scale
    keypoint = build("resnet18", "keypoint", heatmap_size=16)
    heatmaps = video("keypoint", frames=2)
    assert keypoint._prepare(heatmaps).shape == (2, 79, 16, 16)
    quantized = np.rint(heatmaps * 255).astype(np.uint8)  # uint8 heatmaps read as code / 255
    torch.testing.assert_close(keypoint._prepare(quantized), keypoint._prepare(quantized / np.float32(255)))
    with pytest.raises(ValueError, match="keypoint chunks"):
        keypoint._prepare(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="rgb chunks"):
        build("resnet18")._prepare(np.zeros((1, 8, 8, 3), np.float32))


def test_random_init_warns_and_is_seeded():
    with pytest.warns(RandomWeightsWarning, match="useless for research"):
        backbone = build("resnet18")
    assert backbone.random_init and backbone.weights is None
    clip = video("rgb", frames=2)
    np.testing.assert_array_equal(build("resnet18").features([clip]), backbone.features([clip]))
    assert not np.allclose(build("resnet18", seed=1).features([clip]), backbone.features([clip]))


@pytest.mark.parametrize("name", list(FILES))
def test_missing_weights_name_the_file(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeights, match=FILES[name]) as error:
        build_backbone(name, "rgb")
    assert "https://download.pytorch.org/models/" + FILES[name] in str(error.value)
    with pytest.raises(MissingWeights, match="absent.pth"):
        build_backbone(name, "rgb", weights=tmp_path / "absent.pth")


def test_registry():
    assert {"resnet18", "resnet34", "s3d"} <= set(backbone_names())
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", "rgb", weights="none")
    with pytest.raises(ValueError, match="stream"):
        build_backbone("resnet18", "depth", weights="none")

    class Means(Backbone):
        name, dim = "means", 3

        def __init__(self, stream, weights, device, batch_size):
            self.stream = stream

        def iter_features(self, chunks):
            for chunk in chunks:
                yield chunk.reshape(len(chunk), -1, 3).mean(1).astype(np.float32)

    register_backbone("means", Means)
    assert "means" in backbone_names()
    with build_backbone("means", "rgb") as backbone:
        assert backbone.features(chunked(video("rgb", frames=5), 2)).shape == (5, 3)
