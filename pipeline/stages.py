"""Stages: plain functions from (one video, a config) to arrays, registered once by name.

Each CLI stage command and every workflow run (`cslr-pipe run`) execute the same Stage objects
through :mod:`cslr_pipe.pipeline.runner`. A stage's ``build(config, device)`` loads its backend
once per shard and returns the function that processes one video.
"""

from __future__ import annotations

import importlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cslr_pipe.features.backbones import RANDOM_INIT, RandomWeightsWarning, backbone_factory, build_backbone
from cslr_pipe.features.codecs import DEFAULT_BOUND, DEFAULT_STORAGE, iter_encode_flow, quantize_linear
from cslr_pipe.features.errors import InputError, MissingFileError
from cslr_pipe.features.flow import build_flow_backend, flow_backend_factory, iter_flow
from cslr_pipe.features.heatmaps import PRESETS as HEATMAP_PRESETS, iter_heatmaps
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.features.pose import build_pose_backend, pose_backend_factory
from cslr_pipe.features.store import Cache, Provenance, sha256_file
from cslr_pipe.features.video import VideoError, iter_frames, probe_video
from cslr_pipe.features.weights import resolve_device

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


@dataclass
class VideoItem:
    """One video handed to a stage: its manifest row, its resolved path, earlier stages' results."""

    row: ManifestRow
    path: Path
    cache: Cache | None = None
    requires: tuple[str, ...] = ()

    def inputs(self) -> dict[str, np.ndarray]:
        """Results of the stages this one requires, read from the cache."""
        if not self.requires:
            return {}
        if self.cache is None:
            raise VideoError(self.path, f"needs {', '.join(self.requires)} results, and there is no cache")
        try:
            return self.cache.read(self.row.id, stages=self.requires)
        except KeyError as error:
            raise VideoError(self.path, error.args[0]) from None


@dataclass
class StageOutput:
    """What a stage returns for one video."""

    arrays: dict[str, np.ndarray]
    attrs: dict[str, dict] = field(default_factory=dict)  # per dataset (e.g. its encoding)
    group_attrs: dict = field(default_factory=dict)  # per video (frame size, fps, ...)


Processor = Callable[[VideoItem], StageOutput]


@dataclass(frozen=True)
class Stage:
    """A named step of the DAG; its outputs go to CACHE/<name>/."""

    name: str
    build: Callable[[dict, str], Processor]  # (config, device) -> process one video
    defaults: dict  # every config key with its default; unknown keys are refused
    requires: tuple[str, ...] = ()
    description: str = ""
    complete: Callable[[dict], dict] | None = None  # fills in what a config leaves implicit

    def resolve_config(self, config: dict | None) -> dict:
        """Defaults overlaid with ``config``; a key the stage does not know is an error."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise InputError(f"stage {self.name!r} has no option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(self.defaults)) or 'none'}")
        config = {**self.defaults, **config}
        return self.complete(config) if self.complete else config

    def warn_random_weights(self, config: dict) -> None:
        """One RandomWeightsWarning for a run of this stage with ``weights: none`` (its workers stay quiet)."""
        if config.get("weights") == RANDOM_INIT:
            warnings.warn(f"{self.name}: weights 'none' is a randomly initialised {config.get('backbone', 'network')}; "
                          "its features are useless for research (fine only for the offline demo)",
                          RandomWeightsWarning, stacklevel=3)

    def provenance(self, config: dict) -> Provenance:
        """What the results depend on: the weights file enters by its sha256, not its path."""
        weights = config.get("weights")
        if weights == RANDOM_INIT:
            digest = "random-init"  # recorded, so random features are never taken for real ones
        elif weights and not Path(weights).is_file():
            raise MissingFileError(f"stage {self.name}: weights file {weights} not found")
        else:
            digest = sha256_file(weights) if weights else "none"
        kept = {k: v for k, v in config.items() if k != "weights"}
        return Provenance(self.name, str(config.get("backend", "builtin")), kept, digest)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    if not _STAGE_NAME.match(stage.name):
        raise InputError(f"stage name {stage.name!r} must match {_STAGE_NAME.pattern}")
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    """A registered stage by name, or a user's Stage object by import path ``module:attribute``."""
    if name in STAGES:
        return STAGES[name]
    if ":" in name:
        module, _, attribute = name.partition(":")
        stage = getattr(importlib.import_module(module), attribute)
        if not isinstance(stage, Stage) or not _STAGE_NAME.match(stage.name):
            raise InputError(f"{name} is not a cslr_pipe Stage with a name matching {_STAGE_NAME.pattern}")
        return stage
    raise InputError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}")


# ---------------------------------------------------------------------------------------------
# probe: decode every frame once; catches unreadable videos before the expensive stages run.


def _build_probe(config: dict, device: str) -> Processor:
    def probe(item: VideoItem) -> StageOutput:
        info = probe_video(item.path)
        means = [chunk.reshape(len(chunk), -1, 3).mean(axis=1)
                 for chunk in iter_frames(item.path)]
        frame_mean = np.concatenate(means).astype(np.float32)
        fps = info.fps or item.row.fps or 0.0
        return StageOutput({"frame_mean": frame_mean},
                           group_attrs={"num_frames": len(frame_mean), "height": info.height,
                                        "width": info.width, "fps": float(fps)})
    return probe


register_stage(Stage(
    name="probe",
    build=_build_probe,
    defaults={},
    description="Decode every frame; store frame count, size, fps and the mean colour per frame.",
))


# ---------------------------------------------------------------------------------------------
# keypoints: whole-body pose per frame, COCO-WholeBody [T, 133, 3] (x, y, score) in source pixels.


def _weights_of(factory_of: Callable[[str], Callable], key: str) -> Callable[[dict], dict]:
    """A Stage.complete hook naming the weights file the model of ``config[key]`` will use, so
    that its sha256 enters the provenance (random initialisation stays "none")."""
    def complete(config: dict) -> dict:
        if config["weights"] == RANDOM_INIT:
            return config
        given = Path(config["weights"]) if config["weights"] else None
        weights = factory_of(config[key]).locate_weights(given)
        return {**config, "weights": str(weights) if weights else None}
    return complete


class _KeypointExtractor:
    """One pose backend for a whole shard; a fresh tracking state per video."""

    def __init__(self, config: dict, device: str):
        self.chunk_size = 32
        self.backend = build_pose_backend(config["backend"], config["weights"], resolve_device(device),
                                          **config["options"])

    def __call__(self, item: VideoItem) -> StageOutput:
        self.backend.begin_video()
        info = probe_video(item.path)
        chunks = [self.backend(frames) for frames in iter_frames(item.path, self.chunk_size)]
        keypoints = np.concatenate(chunks).astype(np.float32)
        return StageOutput({"keypoints": keypoints},
                           group_attrs={"height": info.height, "width": info.width,
                                        "fps": float(info.fps or item.row.fps or 0.0),
                                        "num_frames": len(keypoints)})

    def close(self) -> None:
        self.backend.close()


register_stage(Stage(
    name="keypoints",
    build=_KeypointExtractor,
    defaults={"backend": "mediapipe", "weights": None, "options": {}},
    complete=_weights_of(pose_backend_factory, "backend"),
    description="Whole-body keypoints [T, 133, 3] (x, y, score) in source pixels, COCO-WholeBody order.",
))


# ---------------------------------------------------------------------------------------------
# heatmaps: Gaussian heatmaps of the 79 points rendered from the keypoints and stored as uint8.

_HEATMAP_DEFAULTS = {"points": "twostream", "preset": None, "sigma": None, "size": None, "threshold": None,
                     "render_size": None, "antialias": None}  # None: the preset's (default signvtcl)
_PRESET_KEYS = {"sigma": "sigma", "size": "out_size", "threshold": "threshold", "render_size": "render_size",
                "antialias": "antialias"}  # stage config key: render_heatmaps keyword


def heatmap_preset(name: str | None) -> dict:
    """The keywords of features.heatmaps.PRESETS[name] ({} for None); ValueError naming the known ones."""
    if name is None:
        return {}
    if name not in HEATMAP_PRESETS:
        raise InputError(f"unknown heatmap preset {name!r}; known: {', '.join(sorted(HEATMAP_PRESETS))}")
    return HEATMAP_PRESETS[name]


def _complete_heatmaps(config: dict) -> dict:
    """The preset (default signvtcl) fills the rendering keys a config leaves out; keys given
    override it. The provenance so records what was rendered (threshold None: scores ignored);
    preset, render_size and antialias are left out when they do not apply, so a default config
    is recorded as before presets existed: {points, sigma, size, threshold}."""
    preset = heatmap_preset(config["preset"] or "signvtcl")
    for key, keyword in _PRESET_KEYS.items():
        if config[key] is None and keyword in preset:
            value = preset[keyword]
            config[key] = list(value) if isinstance(value, tuple) else value
    if config["render_size"] is None:
        config["antialias"] = None  # nothing is resized
    elif config["antialias"] is None:
        config["antialias"] = True
    return {key: value for key, value in config.items()
            if value is not None or key not in ("preset", "render_size", "antialias")}


def _render_options(config: dict) -> dict:
    """render_heatmaps keywords of a completed heatmaps config."""
    render_size = config.get("render_size")
    return {"out_size": tuple(config["size"]), "sigma": config["sigma"], "threshold": config["threshold"],
            "render_size": tuple(render_size) if render_size else None,
            "antialias": config.get("antialias") is not False}


def _build_heatmaps(config: dict, device: str) -> Processor:
    def render(item: VideoItem) -> StageOutput:
        keypoints = item.inputs()["keypoints"]
        attrs = item.cache.attrs(item.row.id, "keypoints")
        frame_size = (int(attrs["height"]), int(attrs["width"]))
        chunks = iter_heatmaps(keypoints, frame_size, points=config["points"], chunk_size=16,
                               **_render_options(config))
        codes = (quantize_linear(chunk, 0.0, 1.0)[0] for chunk in chunks)
        _, encoding = quantize_linear(np.zeros(1), 0.0, 1.0)
        return StageOutput({"heatmaps": codes}, attrs={"heatmaps": encoding},
                           group_attrs={"points": config["points"]})
    return render


register_stage(Stage(
    name="heatmaps",
    build=_build_heatmaps,
    defaults=_HEATMAP_DEFAULTS,
    requires=("keypoints",),
    complete=_complete_heatmaps,
    description="Gaussian heatmaps [T, 79, h, w] of the keypoints, stored as uint8 (error <= 1/510); "
                "preset: a name of features.heatmaps.PRESETS (signvtcl, slrt-phoenix, slrt-csl-daily).",
))


# ---------------------------------------------------------------------------------------------
# flow: optical flow between consecutive frames [T-1, 2, h, w] at a fixed size, stored compactly.


class _FlowExtractor:
    """One flow backend for a whole shard; frames stream through it in chunks."""

    def __init__(self, config: dict, device: str):
        self.config = config
        self.backend = build_flow_backend(config["backend"], config["weights"], resolve_device(device),
                                          **config["options"])

    def __call__(self, item: VideoItem) -> StageOutput:
        height, width = self.config["size"]
        info = probe_video(item.path)
        if info.num_frames < 2:
            raise VideoError(item.path, "optical flow needs at least 2 frames")
        frames = iter_frames(item.path, chunk_size=32, size=(height, width))
        chunks, attrs = iter_encode_flow(iter_flow(self.backend, frames, batch=16),
                                         self.config["storage"], self.config["bound"])
        return StageOutput({"flow": chunks}, attrs={"flow": attrs},
                           group_attrs={"height": height, "width": width,
                                        "source_height": info.height, "source_width": info.width})

    def close(self) -> None:
        self.backend.close()


register_stage(Stage(
    name="flow",
    build=_FlowExtractor,
    defaults={"backend": "dis", "weights": None, "size": [224, 224], "storage": DEFAULT_STORAGE,
              "bound": DEFAULT_BOUND, "options": {}},
    complete=_weights_of(flow_backend_factory, "backend"),
    description="Optical flow [T-1, 2, h, w] in pixels of the resized frames, from frame t to t+1.",
))


# ---------------------------------------------------------------------------------------------
# features.<stream>: a frozen backbone over the RGB frames, the keypoint heatmaps or the flow.

FEATURE_STREAMS = {"rgb": (), "keypoint": ("keypoints",), "flow": ("flow",)}


class _FeatureExtractor:
    """One frozen backbone for a whole shard; its input streams through in chunks."""

    chunk = 64

    def __init__(self, stream: str, config: dict, device: str):
        self.stream, self.config = stream, config
        with warnings.catch_warnings():  # said once per run by warn_random_weights, not per shard
            warnings.simplefilter("ignore", RandomWeightsWarning)
            self.backbone = build_backbone(config["backbone"], stream, config["weights"], resolve_device(device),
                                           batch_size=32, **config["options"])

    def chunks(self, item: VideoItem):
        """The stream of one video in natural units, in chunks along time."""
        if self.stream == "rgb":
            return iter_frames(item.path, chunk_size=self.chunk)
        inputs = item.inputs()
        if self.stream == "flow":
            flow = inputs["flow"]
            return (flow[i:i + self.chunk] for i in range(0, len(flow), self.chunk))
        attrs = item.cache.attrs(item.row.id, "keypoints")
        return iter_heatmaps(inputs["keypoints"], (int(attrs["height"]), int(attrs["width"])),
                             points="twostream", chunk_size=self.chunk,
                             **heatmap_preset(self.config.get("heatmap_preset")))

    def __call__(self, item: VideoItem) -> StageOutput:
        name = f"features.{self.stream}"
        features = self.backbone.features(self.chunks(item))
        if not len(features):
            raise VideoError(item.path, f"{name}: no features (video too short for {self.config['backbone']})")
        return StageOutput({name: features.astype(np.float16)},
                           group_attrs={"temporal_stride": self.backbone.temporal_stride, "dim": self.backbone.dim})

    def close(self) -> None:
        self.backbone.close()


def _complete_keypoint_features(config: dict) -> dict:
    """features.keypoint: ``heatmap_preset`` names the preset its heatmaps are rendered with (None:
    the default rendering, left out of the recorded config as before presets existed)."""
    heatmap_preset(config["heatmap_preset"])
    config = _weights_of(backbone_factory, "backbone")(config)
    return config if config["heatmap_preset"] else {k: v for k, v in config.items() if k != "heatmap_preset"}


for _stream, _requires in FEATURE_STREAMS.items():
    register_stage(Stage(
        name=f"features.{_stream}",
        build=lambda config, device, stream=_stream: _FeatureExtractor(stream, config, device),
        defaults={"backbone": "resnet18", "weights": None, "options": {},
                  **({"heatmap_preset": None} if _stream == "keypoint" else {})},
        requires=_requires,
        complete=(_complete_keypoint_features if _stream == "keypoint"
                  else _weights_of(backbone_factory, "backbone")),
        description=f"Frozen-backbone features [T', D] float16 of the {_stream} stream"
                    + (" (heatmap_preset: a name of features.heatmaps.PRESETS)." if _stream == "keypoint" else "."),
    ))
