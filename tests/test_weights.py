"""Weights as records (torchvision's enums, our HRNet record) and the hash check of published names.

No published file can be downloaded here: the "wrong file under a published name" is a random
state dict of the right architecture, which is exactly what the check must catch.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from torchvision.models import ResNet18_Weights, ResNet34_Weights
from torchvision.models.video import S3D_Weights
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

from cslr_pipe.features import store
from cslr_pipe.features.backbones import ResNet18, ResNet34, S3DBackbone
from cslr_pipe.features.errors import InputError
from cslr_pipe.features.flow import build_flow_backend
from cslr_pipe.features.flow.raft import RAFTLarge, RAFTSmall
from cslr_pipe.features.pose.hrnet_backend import WEIGHTS as HRNET
from cslr_pipe.features.weights import (CheckpointError, MissingWeights, PublishedWeights, check_published_hash,
                                        torchvision_files, torchvision_weights)
from cslr_pipe.pipeline.stages import get_stage

TORCHVISION = "https://download.pytorch.org/models/"
# torchvision's ImageNet classification transforms and its video (Kinetics-400) ones, as documented
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KINETICS = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))


@pytest.mark.parametrize("backbone, enum, file, normalisation", [
    (ResNet18, ResNet18_Weights.IMAGENET1K_V1, "resnet18-f37072fd.pth", IMAGENET),
    (ResNet34, ResNet34_Weights.IMAGENET1K_V1, "resnet34-b627a593.pth", IMAGENET),
    (S3DBackbone, S3D_Weights.KINETICS400_V1, "s3d-d76dad2f.pth", KINETICS),
], ids=["resnet18", "resnet34", "s3d"])
def test_backbone_records_are_torchvisions(backbone, enum, file, normalisation):
    record = backbone.published()
    assert record.file == file and record.url == TORCHVISION + file == enum.url
    assert (record.mean, record.std) == normalisation
    assert record.value_range == 1.0 and record.hash_prefix == file[-12:-4]
    assert record.source == f"torchvision.models.{type(enum).__name__}.{enum.name}"


def test_raft_records_are_torchvisions():
    small, large = RAFTSmall.published(), RAFTLarge.published()
    assert small.file == "raft_small_C_T_V2-01064c6d.pth" and small.url == Raft_Small_Weights.C_T_V2.url
    assert large.file == "raft_large_C_T_SKHT_V2-ff5fadd5.pth" and large.url == Raft_Large_Weights.C_T_SKHT_V2.url
    assert small.stem == "raft_small_C_T_V2" and small.hash_prefix == "01064c6d"
    assert small.mean == small.std == ()  # RAFT scales frames to [-1, 1] itself
    assert [r.file for r in RAFTSmall.published_files()] == ["raft_small_C_T_V2-01064c6d.pth",
                                                              "raft_small_C_T_V1-ad48884c.pth"]
    assert RAFTLarge.published_files()[0] == large
    assert {r.file for r in RAFTLarge.published_files()} == {
        "raft_large_C_T_SKHT_V2-ff5fadd5.pth", "raft_large_C_T_SKHT_K_V2-b5c70766.pth",
        "raft_large_C_T_V2-1bb1363a.pth", "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
        "raft_large_C_T_SKHT_K_V1-4a6a5039.pth", "raft_large_C_T_V1-22a6c225.pth"}
    assert set(torchvision_files("raft_large")) == set(RAFTLarge.published_files())


def test_hrnet_record():
    assert HRNET.file == "hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth"
    assert HRNET.url == "https://download.openmmlab.com/mmpose/top_down/hrnet/" + HRNET.file
    assert HRNET.stem == "hrnet_w48_coco_wholebody_384x288_dark" and HRNET.hash_prefix == "f5726563"
    assert HRNET.mean == (123.675, 116.28, 103.53) and HRNET.std == (58.395, 57.12, 57.375)
    assert HRNET.value_range == 255.0  # ImageNet's mean/std on 0-255 values
    np.testing.assert_allclose(np.array([HRNET.mean, HRNET.std]) / 255, IMAGENET, rtol=1e-12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        HRNET.file = "other.pth"


def test_names_without_a_hash():
    record = PublishedWeights("my_weights.pth", "https://example.org/my_weights.pth")
    assert record.stem == "my_weights.pth" and record.hash_prefix == ""
    assert torchvision_weights("resnet18", "IMAGENET1K_V1") is ResNet18.published()  # read once


@pytest.fixture(scope="module")
def raft_state(tmp_path_factory):
    """A random raft_small state dict (torchvision's layout) and its sha256."""
    from torchvision.models import optical_flow

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "state.pth"
    torch.save(optical_flow.raft_small(weights=None, progress=False).state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def copy_as(source, target):
    target.write_bytes(source.read_bytes())
    return target


def test_another_state_dict_under_the_published_name_is_refused_in_one_line(raft_state, tmp_path):
    state, digest = raft_state
    published = copy_as(state, tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    with pytest.raises(CheckpointError) as error:
        build_flow_backend("raft-small", weights=published)
    message = str(error.value)
    assert isinstance(error.value, InputError) and "\n" not in message
    assert message.startswith(f"{published}: refused: its name says its sha256 starts with 01064c6d")
    assert f"but it starts with {digest[:8]}" in message
    assert TORCHVISION + "raft_small_C_T_V2-01064c6d.pth" in message and "rename your own checkpoint" in message
    # under another published name of the family, and with a longer prefix, the same
    with pytest.raises(CheckpointError, match="ad48884c"):
        build_flow_backend("raft-small", weights=copy_as(state, tmp_path / "raft_small_C_T_V1-ad48884c.pth"))
    with pytest.raises(CheckpointError, match="01064c6d0000"):
        build_flow_backend("raft-small", weights=copy_as(state, tmp_path / "raft_small_C_T_V2-01064c6d0000.pth"))


def test_the_same_file_under_its_own_prefix_loads(raft_state, tmp_path):
    state, digest = raft_state
    for name in (f"raft_small_C_T_V2-{digest[:8]}.pth", f"raft_small_C_T_V2-{digest[:16]}.pth"):
        path = copy_as(state, tmp_path / name)
        backend = build_flow_backend("raft-small", weights=path, num_updates=1)
        assert backend.weights == path
        backend.close()


def test_a_file_of_ones_own_is_not_checked(raft_state, tmp_path, monkeypatch):
    state, _ = raft_state
    hashed = []
    monkeypatch.setattr(store, "sha256_file", lambda path: hashed.append(path) or "0" * 64)
    for name in ("mine.pth", "my-raft-01064c6d.pth", "raft_small_C_T_V2.pth", "raft_small_C_T_V2-final.pth"):
        build_flow_backend("raft-small", weights=copy_as(state, tmp_path / name), num_updates=1).close()
    assert hashed == []
    # a stem of another model's files is not this model's to check either
    check_published_hash(copy_as(state, tmp_path / "resnet18-01064c6d.pth"), torchvision_files("raft_small"))
    assert hashed == []


def test_a_missing_file_is_still_reported_as_missing(tmp_path, monkeypatch):
    with pytest.raises(MissingWeights, match="raft_small_C_T_V2-01064c6d.pth"):
        build_flow_backend("raft-small", weights=tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeights) as error:
        build_flow_backend("raft-small")
    assert f"published at {TORCHVISION}raft_small_C_T_V2-01064c6d.pth" in str(error.value)
    assert isinstance(error.value, InputError) and isinstance(error.value, FileNotFoundError)


def test_the_provenance_hash_is_not_computed_twice(raft_state, tmp_path, monkeypatch):
    state, digest = raft_state
    path = copy_as(state, tmp_path / f"raft_small_C_T_V2-{digest[:8]}.pth")  # a path not hashed before
    reads = []
    sha256 = store.hashlib.sha256
    monkeypatch.setattr(store.hashlib, "sha256", lambda *args: reads.append(1) or sha256(*args))
    stage = get_stage("flow")
    config = stage.resolve_config({"backend": "raft-small", "weights": str(path)})
    assert stage.provenance(config).weights_sha256 == digest
    build_flow_backend("raft-small", weights=path, num_updates=1).close()  # checks the name's prefix
    assert len(reads) == 1
    path.write_bytes(state.read_bytes() + b"\0")  # a changed file is hashed again
    assert store.sha256_file(path) != digest and len(reads) == 2
