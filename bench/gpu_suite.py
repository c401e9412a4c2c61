"""Every GPU benchmark in one command, sized to finish in <= 6 minutes on one H100/H200.

    python bench/gpu_suite.py --out runs/gpu-suite            # on a machine with a CUDA GPU
    python bench/gpu_suite.py --dry-run --out /tmp/gpu-suite  # the same code paths, CPU, tiny sizes

Each row times a measurement and its baseline in the same run and reports the absolute figure
and the ratio (measured / baseline, higher is better). Rows run in the order below; one that
fails is reported with the exception's one-line message and the others still run; a row whose
estimated time no longer fits in ``--budget-s`` (default 360 s of wall time, counted from the
start; estimates grow when the rows before ran longer than theirs) is skipped with the estimate
and the time left. The exit status is 1 when a row failed, else 0. Each row is printed when it
finishes, and ``OUT/gpu_suite.json`` and ``OUT/gpu_suite.md`` are rewritten after every row (so a
run that is killed still leaves the rows it finished).

The measurements are the bench scripts' own functions (bench/heatmaps.py, flow.py, keypoints.py,
backbones.py, trainers.py, diffsign_sampling.py), imported, with random weights (the compute of
the real checkpoints; nothing is downloaded). ``--dry-run`` runs the same code on the CPU at tiny
sizes (a few frames, small images, a narrow HRNet, 1-2 iterations, bf16 where the GPU uses fp16):
its numbers mean nothing, it checks that the suite runs end to end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
PHOENIX_T_FRAMES = 0.95e6  # frames of PHOENIX-2014-T (train + dev + test), for the derived hours


def bench_module(name: str):
    """bench/<name>.py imported as ``bench_<name>`` (bench/ is not a package)."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]


# Sizes of the GPU run and of the dry run (CPU). Changing the GPU sizes changes the estimates.
GPU_SIZES = dict(
    heat_frames=1024, heat_repeats=5, bandwidth_bytes=1 << 30, heat_chunk=256,
    raft_pairs=64, raft_size=224, raft_batch=32, raft_updates=12,
    hrnet_frames=64, hrnet_batch=32, hrnet_tiny=False,
    backbone_frames=2048, backbone_batch=32, backbone_size=224,
    corpus_train=600, corpus_dev=32, corpus_test=32, ctc_epochs=2, ctc_options=["hidden=512"],
    diffsign_options=[], diffsign_seeds=1,
    e2e_frames=256, e2e_chunk=64, e2e_flow_size=224, e2e_raft="raft-large",
)
DRY_SIZES = dict(
    heat_frames=8, heat_repeats=2, bandwidth_bytes=16 << 20, heat_chunk=4,
    raft_pairs=2, raft_size=64, raft_batch=2, raft_updates=2,
    hrnet_frames=2, hrnet_batch=2, hrnet_tiny=True,
    backbone_frames=2, backbone_batch=2, backbone_size=32,
    corpus_train=16, corpus_dev=4, corpus_test=4, ctc_epochs=2, ctc_options=["hidden=32"],
    diffsign_options=["hidden=32", "heads=2", "gloss_layers=1", "decoder_layers=1", "dit_layers=1",
                      "gloss_tokens=8", "num_steps=50"], diffsign_seeds=1,
    e2e_frames=3, e2e_chunk=2, e2e_flow_size=64, e2e_raft="raft-small",
)
# A narrow HRNet for the dry run (W48's stem and stage 1, branches of 8-64 channels).
TINY_HRNET_STAGES = ((1, "BASIC", (1, 1), (8, 16)), (1, "BASIC", (1, 1, 1), (8, 16, 32)),
                     (1, "BASIC", (1, 1, 1, 1), (8, 16, 32, 64)))


@dataclass
class Row:
    key: str
    title: str
    measures: str  # what --help says
    estimate_s: float  # wall seconds on one H100/H200 at GPU_SIZES (a guess until measured)
    estimate_dry_s: float  # on 2 busy CPU cores at DRY_SIZES
    run: Callable[["Context"], dict]


class Context:
    """What the rows share: device, sizes, a scratch folder, and lazily built inputs."""

    def __init__(self, device: str, dry: bool, sizes: dict, scratch: Path):
        self.device, self.dry, self.sizes, self.scratch = device, dry, sizes, scratch
        self.cuda = device.startswith("cuda")
        self.half = "fp16" if self.cuda else "bf16"  # CPU autocast: bf16 is the supported half type
        self.half_dtype = torch.float16 if self.cuda else torch.bfloat16
        self._cache: dict = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def cached(self, key: str, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def signer_frames(self, count: int, height: int = 260, width: int = 210) -> np.ndarray:
        """[count, H, W, 3] uint8 frames of the synthetic signer (PHOENIX-2014 size by default),
        the video repeated as needed."""
        from cslr_pipe.pipeline.synthetic import CorpusSpec, render_video

        def make():
            frames, _ = render_video(["HELLO", "MORE", "THANKS", "RAIN"], CorpusSpec(height=height, width=width),
                                     np.random.default_rng(0))
            return frames

        frames = self.cached(f"signer-{height}x{width}", make)
        return np.ascontiguousarray(np.resize(frames, (count, *frames.shape[1:])))

    def hrnet_model(self) -> torch.nn.Module:
        from cslr_pipe.features.pose.hrnet import TopDownHeatmapModel, hrnet_w48_wholebody

        def make():
            torch.manual_seed(0)
            return TopDownHeatmapModel(TINY_HRNET_STAGES) if self.sizes["hrnet_tiny"] else hrnet_w48_wholebody()
        return self.cached("hrnet", make)

    def corpus(self):
        """(manifest, vocabulary, cache, spec) of a small synthetic feature corpus."""
        from cslr_pipe.features.manifest import read_vocabulary
        from cslr_pipe.pipeline.synthetic_features import FeatureCorpusSpec, make_feature_corpus

        def make():
            s = self.sizes
            spec = FeatureCorpusSpec(num_train=s["corpus_train"], num_dev=s["corpus_dev"], num_test=s["corpus_test"])
            folder = self.scratch / "corpus"
            make_feature_corpus(folder, spec)
            return folder / "manifest.jsonl", read_vocabulary(folder / "manifest.vocab.json"), folder / "cache", spec
        return self.cached("corpus", make)


def result(value: float, unit: str, baseline: float, label: str, baseline_label: str, **details) -> dict:
    return {"value": float(value), "unit": unit, "baseline": float(baseline), "ratio": float(value) / float(baseline),
            "label": label, "baseline_label": baseline_label, "details": details}


# ----------------------------------------------------------------------------- the rows
def heatmaps_row(precision: str) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        hm = bench_module("heatmaps")
        from cslr_pipe.features.heatmaps import render_heatmaps

        s, dev = ctx.sizes, torch.device(ctx.device)
        dtype = torch.float32 if precision == "fp32" else ctx.half_dtype
        bandwidth = ctx._cache.get("bandwidth")
        if bandwidth is None:  # the device's write bandwidth: fill, and copy (read + write)
            big = torch.empty(s["bandwidth_bytes"], dtype=torch.uint8, device=dev)
            other = torch.empty_like(big)
            t = hm.best_times({"fill": lambda: big.fill_(1), "copy": lambda: other.copy_(big)},
                              max(s["heat_repeats"], 2), ctx.sync)
            bandwidth = ctx._cache["bandwidth"] = max(big.numel() / t["fill"], big.numel() / t["copy"])
            del big, other
        frames = s["heat_frames"]
        kp = torch.from_numpy(hm.make_keypoints(frames, seed=1)).to(dev)
        seconds = hm.best_times({"render": lambda: render_heatmaps(
            kp, hm.FRAME_SIZE, hm.OUT_SIZE, hm.SIGMA, points="twostream", chunk_size=s["heat_chunk"], dtype=dtype)},
            s["heat_repeats"], ctx.sync)["render"]
        bytes_per_frame = hm.K * hm.OUT_SIZE[0] * hm.OUT_SIZE[1] * torch.tensor([], dtype=dtype).element_size()
        floor_fps = bandwidth / bytes_per_frame
        return result(frames / seconds, "frames/s", floor_fps,
                      f"render_heatmaps {str(dtype).replace('torch.', '')}, {frames} frames, chunk {s['heat_chunk']}",
                      f"bandwidth floor ({bytes_per_frame / 1e6:.2f} MB per frame at {bandwidth / 1e9:.0f} GB/s)",
                      write_bandwidth_gb_s=round(bandwidth / 1e9, 1), ms_per_frame=1e3 * seconds / frames)
    return run


def raft_row(name: str) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        flow = bench_module("flow")
        s = ctx.sizes
        frames = ctx.signer_frames(s["raft_pairs"] + 1, s["raft_size"], s["raft_size"])
        slow, fast = flow.raft_loop_vs_batched(name, frames, ctx.scratch, ctx.device, s["raft_updates"],
                                               s["raft_batch"], ctx.half)
        return result(fast, "fields/s", slow,
                      f"batched x{s['raft_batch']} {ctx.half} autocast", "per-pair fp32 loop",
                      pairs=s["raft_pairs"], size=s["raft_size"], updates=s["raft_updates"], goal=flow.GOAL)
    return run


def hrnet_run(ctx: Context) -> dict:
    keypoints = bench_module("keypoints")
    from cslr_pipe.features.pose.hrnet_backend import HRNetWholeBody

    s = ctx.sizes
    frames = ctx.signer_frames(s["hrnet_frames"])
    crops = np.random.default_rng(0).integers(0, 256, (s["hrnet_batch"], 384, 288, 3), np.uint8)
    calls = max(1, s["hrnet_frames"] // s["hrnet_batch"])
    speeds, network = {}, {}
    for precision in ("fp32", ctx.half):
        backend = HRNetWholeBody.from_model(ctx.hrnet_model(), ctx.device, flip_test=True,
                                            batch_size=s["hrnet_batch"], precision=precision)
        speeds[precision] = keypoints.frames_per_second(backend, frames, chunk=s["hrnet_batch"])
        start = time.perf_counter()  # the network alone (crops in, heatmaps back): no warp, no DARK decoding
        for _ in range(calls):
            backend.predict_heatmaps(crops)
        network[precision] = round(calls * len(crops) / (time.perf_counter() - start), 2)
        backend.close()
    return result(speeds[ctx.half], "frames/s", speeds["fp32"], f"batched x{s['hrnet_batch']} {ctx.half} autocast",
                  f"batched x{s['hrnet_batch']} fp32", frames=s["hrnet_frames"], flip_test=True,
                  network_only_frames_per_second=network,
                  model="tiny HRNet (dry run)" if s["hrnet_tiny"] else "HRNet-w48 384x288, DARK")


def backbone_run(ctx: Context) -> dict:
    backbones = bench_module("backbones")
    s = ctx.sizes
    args = SimpleNamespace(device=ctx.device, batch=s["backbone_batch"], size=s["backbone_size"], window=64,
                           context=32, warmup=0, frames=s["backbone_frames"])
    frames = backbones.make_frames(s["backbone_frames"], s["backbone_size"])
    fp32 = backbones.measure("resnet34", "fp32", frames, args)
    half = backbones.measure("resnet34", ctx.half, frames, args)
    return result(half["per_s"], "frames/s", fp32["per_s"],
                  f"resnet34 {ctx.half} autocast, batch {s['backbone_batch']}", "resnet34 fp32", frames=s["backbone_frames"], size=s["backbone_size"])


def trainer_args(ctx: Context, options: list[str], epochs: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(epochs=epochs, model_option=list(options), device=ctx.device, beam_width=1,
                           init_from_ctc=False)


def ctc_run(ctx: Context) -> dict:
    trainers = bench_module("trainers")
    from cslr_pipe.training.trainer import Run, train

    s = ctx.sizes
    manifest, vocabulary, cache, spec = ctx.corpus()
    config = trainers.config_for("ctc", trainer_args(ctx, s["ctc_options"], s["ctc_epochs"]), 0)
    speeds = {}
    for amp in (False, True):
        out = ctx.scratch / f"ctc-amp{int(amp)}"
        train(replace(config, amp=amp), Run(manifest, vocabulary, cache, out), log=lambda _: None, progress=False)
        history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        speeds[amp] = history[-1]["sequences_per_second"]  # the last epoch's training pass (the first warms up)
    note = "" if ctx.cuda else "amp is ignored on the CPU: the ratio is noise"
    return result(speeds[True], "sequences/s", speeds[False], "ctc, bf16 autocast (amp)", "ctc, fp32 (no amp)",
                  train_sequences=spec.num_train, epochs=s["ctc_epochs"], options=s["ctc_options"],
                  **({"note": note} if note else {}))


def diffsign_run(ctx: Context) -> dict:
    trainers = bench_module("trainers")
    sampling = bench_module("diffsign_sampling")
    from cslr_pipe.pipeline.synthetic_features import STREAM
    from cslr_pipe.training.trainer import build_model, save_checkpoint

    s = ctx.sizes
    manifest, vocabulary, cache, spec = ctx.corpus()
    config = trainers.config_for("diffsign", trainer_args(ctx, s["diffsign_options"]), 0)
    dims = {STREAM: spec.dim}
    torch.manual_seed(0)
    model = build_model(config, dims, len(vocabulary))
    model.set_phase("stage2")  # recognition generates G' (untrained weights: the compute of a trained model)
    checkpoint = ctx.scratch / "diffsign-random.pt"
    save_checkpoint(checkpoint, config=asdict(config), vocabulary=vocabulary, input_dims=dims,
                    model=model.state_dict(), epoch=0, history=[])
    seeds = s["diffsign_seeds"]
    sampling.decode(checkpoint, manifest, cache, "test", 1, 1, ctx.device)  # warm-up
    _, ddpm = sampling.decode(checkpoint, manifest, cache, "test", 0, seeds, ctx.device)
    _, ddim = sampling.decode(checkpoint, manifest, cache, "test", 4, seeds, ctx.device)
    steps = model.config.num_steps
    return result(1 / ddim, "passes/s", 1 / ddpm, "DDIM-4", f"DDPM ({steps} steps)",
                  ddim4_seconds_per_pass=ddim, ddpm_seconds_per_pass=ddpm, test_videos=spec.num_test,
                  options=s["diffsign_options"] or trainers.SETTINGS["diffsign"]["model_options"])


def e2e_run(ctx: Context) -> dict:
    import cv2

    flow = bench_module("flow")
    hm = bench_module("heatmaps")
    from cslr_pipe.features.backbones import RANDOM_INIT, RandomWeightsWarning, build_backbone
    from cslr_pipe.features.flow import build_flow_backend
    from cslr_pipe.features.heatmaps import render_heatmaps
    from cslr_pipe.features.pose.hrnet_backend import HRNetWholeBody

    s = ctx.sizes
    n, chunk, size = s["e2e_frames"], s["e2e_chunk"], s["e2e_flow_size"]
    frames = ctx.signer_frames(n + 1)  # PHOENIX size, 260x210; flow of n pairs
    small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    frame_size = frames.shape[1:3]
    pose = HRNetWholeBody.from_model(ctx.hrnet_model(), ctx.device, flip_test=True, batch_size=chunk)
    raft = build_flow_backend(s["e2e_raft"], weights=flow.random_raft_file(ctx.scratch, s["e2e_raft"]),
                              device=ctx.device, num_updates=s["raft_updates"], batch_size=chunk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        backbone = build_backbone("resnet34", "rgb", RANDOM_INIT, ctx.device, batch_size=chunk)
    dev = torch.device(ctx.device)

    def keypoints(i, j):
        return pose(frames[i:j])

    def flows(i, j):
        return raft(small[i:j], small[i + 1:j + 1])

    def heatmaps(kp):
        out = render_heatmaps(torch.from_numpy(kp).to(dev), frame_size, hm.OUT_SIZE, hm.SIGMA, points="twostream",
                              chunk_size=chunk)
        ctx.sync()
        return out

    def features(i, j):
        return backbone.features(iter([frames[i:j]]))

    try:  # warm-up on one chunk, each stage
        kp = keypoints(0, chunk)
        flows(0, chunk), heatmaps(kp), features(0, chunk)
        all_kp = np.concatenate([keypoints(i, min(i + chunk, n)) for i in range(0, n, chunk)])
        stages = {"keypoints": lambda i, j: keypoints(i, j), "flow": flows,
                  "heatmaps": lambda i, j: heatmaps(all_kp[i:j]), "features": features}
        each = {}
        for name, fn in stages.items():
            ctx.sync()
            start = time.perf_counter()
            for i in range(0, n, chunk):
                fn(i, min(i + chunk, n))
            ctx.sync()
            each[name] = n / (time.perf_counter() - start)
        ctx.sync()
        start = time.perf_counter()
        for i in range(0, n, chunk):  # all four on the same chunk, as one extraction job would
            j = min(i + chunk, n)
            heatmaps(keypoints(i, j)), flows(i, j), features(i, j)
        ctx.sync()
        together = n / (time.perf_counter() - start)
    finally:
        pose.close(), raft.close(), backbone.close()
    sequential = 1 / sum(1 / v for v in each.values())
    hours = {name: PHOENIX_T_FRAMES / v / 3600 for name, v in {**each, "together": together}.items()}
    return result(together, "frames/s", sequential, "all four per chunk (one pass)", "sum of the four alone",
                  frames_per_second={k: round(v, 2) for k, v in each.items()},
                  phoenix_2014_t_hours={k: round(v, 3) for k, v in hours.items()},
                  frames=n, chunk=chunk, raft=s["e2e_raft"], flow_size=size,
                  pose="tiny HRNet (dry run)" if s["hrnet_tiny"] else "HRNet-w48, flip test")


ROWS = [
    Row("heatmaps-fp32", "heatmaps fp32 vs bandwidth floor",
        "render_heatmaps (TwoStream-SLR's 79 channels, 112x112, torch on the GPU) frames/s in float32, against "
        "the floor: bytes written per frame / the device's write bandwidth measured in the same run (fill/copy)",
        12, 2, heatmaps_row("fp32")),
    Row("heatmaps-fp16", "heatmaps fp16 vs bandwidth floor", "the same in float16 (bf16 in the dry run)",
        8, 1, heatmaps_row("fp16")),
    Row("raft-small", "RAFT-small batched+autocast vs per-pair loop",
        "RAFT small (random weights, 12 updates, 64 pairs 224x224) batched 32 pairs per pass under fp16 "
        "autocast against a per-pair fp32 loop (bench/flow.py; goal >= 5x)", 30, 5, raft_row("raft-small")),
    Row("raft-large", "RAFT-large batched+autocast vs per-pair loop", "the same for RAFT large",
        45, 8, raft_row("raft-large")),
    Row("hrnet-w48", "HRNet-w48 fp16 vs fp32 (frames/s)",
        "the hrnet pose backend (HRNet-w48 384x288, DARK, flip test, random weights) on 64 PHOENIX-size frames, "
        "batch 32, fp16 autocast against fp32", 35, 6, hrnet_run),
    Row("resnet34", "ResNet-34 features autocast vs fp32",
        "Backbone.features of resnet34 (random weights, preprocessing included) over 2048 frames 224x224, "
        "fp16 autocast against fp32 (bench/backbones.py)", 25, 4, backbone_run),
    Row("ctc-amp", "CTC trainer sequences/s, AMP vs none",
        "cslr-pipe's trainer on the synthetic feature corpus (600 train sequences), ctc hidden 512: training "
        "sequences/s of the last of 2 epochs with amp (bf16 autocast) against amp off", 60, 8, ctc_run),
    Row("diffsign-ddim4", "DiffSign DDIM-4 vs DDPM sampling",
        "DiffSign (bench/trainers.py SETTINGS, untrained, stage 2) decoding 32 test sequences: DDIM in 4 steps "
        "against the 1000-step DDPM chain, passes/s (bench/diffsign_sampling.py)", 45, 6, diffsign_run),
    Row("end-to-end", "end-to-end frames/s, PHOENIX-2014-T hours",
        "keypoints (HRNet-w48, flip test), flow (RAFT large at 224x224), heatmaps and ResNet-34 features on the "
        "same 256 PHOENIX-size frames: frames/s of each alone and of all four per chunk, and the hours for "
        "PHOENIX-2014-T (~0.95 M frames) on one GPU", 75, 8, e2e_run),
]


# ----------------------------------------------------------------------------- report
def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ").replace("|", "/")[:300]


def fmt(value: float) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def markdown(report: dict) -> str:
    lines = [f"GPU suite ({'dry run, CPU' if report['dry_run'] else 'GPU'}): {report['device_name']}, "
             f"torch {report['torch']}, {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget",
             "",
             "| row | measured | baseline | absolute | baseline absolute | ratio | status | s |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for row in report["rows"]:
        if row["status"] == "ok":
            lines.append(f"| {row['key']} | {row['label']} | {row['baseline_label']} | {fmt(row['value'])} "
                         f"{row['unit']} | {fmt(row['baseline'])} {row['unit']} | {row['ratio']:.2f}x | ok | "
                         f"{row['seconds']:.1f} |")
        else:
            lines.append(f"| {row['key']} | {row['title']} | | | | | {row['status']}: {row['reason']} | "
                         f"{row.get('seconds', 0):.1f} |")
    e2e = next((r for r in report["rows"] if r["key"] == "end-to-end" and r["status"] == "ok"), None)
    if e2e:
        d = e2e["details"]
        lines += ["", "| end-to-end stage | frames/s | PHOENIX-2014-T hours |", "|---|---:|---:|"]
        for name, hours in d["phoenix_2014_t_hours"].items():
            fps = e2e["value"] if name == "together" else d["frames_per_second"][name]
            lines.append(f"| {name} | {fmt(fps)} | {hours:.3g} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_suite.md").write_text(markdown(report))


def parse_args(argv):
    rows_help = "\n".join(textwrap.fill(f"{row.measures} (~{row.estimate_s:.0f} s on a GPU)", 100,
                                         initial_indent=f"  {row.key:<15} ", subsequent_indent=" " * 18)
                           for row in ROWS)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"rows (in this order; sizes of the GPU run, --dry-run uses tiny ones):\n{rows_help}\n\n"
               "output: OUT/gpu_suite.json (every row: value, baseline, ratio, status, reason, seconds, "
               "details) and OUT/gpu_suite.md (the same as a table).")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-suite"), help="output folder (runs/gpu-suite)")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="wall-time budget in seconds (360): a row whose estimate does not fit is skipped")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code paths in < 1 min")
    parser.add_argument("--only", default="", help="comma-separated row keys to run (default: all)")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (the default with --dry-run)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: 1 in a dry run, else "
                        "torch's default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = args.device or ("cpu" if args.dry_run else "cuda")
    threads = args.threads or (1 if args.dry_run else 0)
    if threads:
        torch.set_num_threads(threads)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(only) - {row.key for row in ROWS})
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(row.key for row in ROWS)}")
    cuda_ok = device.startswith("cuda") and torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(device) if cuda_ok else (platform.processor() or platform.machine())
    if cuda_ok:
        torch.backends.cudnn.benchmark = False  # the bench scripts' setting: no per-shape autotuning
    with warnings.catch_warnings():  # torch's defaults, unchanged: cuDNN convolutions in "fp32" may use TF32
        warnings.simplefilter("ignore")
        tf32 = {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    report = {"suite": "bench/gpu_suite.py", "command": " ".join(["bench/gpu_suite.py", *(argv or sys.argv[1:])]),
              "dry_run": args.dry_run, "device": device, "device_name": device_name,
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "threads": torch.get_num_threads(), **tf32, "budget_s": args.budget_s, "wall_s": 0.0,
              "sizes": DRY_SIZES if args.dry_run else GPU_SIZES, "rows": []}
    print(f"{report['suite']}: {'dry run on ' if args.dry_run else ''}{device} ({device_name}), torch "
          f"{torch.__version__}, budget {args.budget_s:.0f} s, output {args.out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        ctx = Context(device, args.dry_run, report["sizes"], Path(tmp))
        spent = estimated = 0.0  # of the rows run so far: when they ran long, later estimates grow alike
        for row in ROWS:
            entry = {"key": row.key, "title": row.title, "measures": row.measures}
            estimate = (row.estimate_dry_s if args.dry_run else row.estimate_s) * max(1.0, spent / max(estimated, 1e-9))
            left = args.budget_s - (time.perf_counter() - started)
            if only and row.key not in only:
                entry |= {"status": "skipped", "reason": "not in --only", "seconds": 0.0}
            elif device.startswith("cuda") and not cuda_ok:
                entry |= {"status": "skipped", "reason": "no CUDA device (torch.cuda.is_available() is False); "
                          "--dry-run runs the CPU check", "seconds": 0.0}
            elif estimate > left:
                entry |= {"status": "skipped", "reason": f"would not fit: estimated {math.ceil(estimate)} s, "
                          f"{max(left, 0):.0f} s of the budget left", "seconds": 0.0}
            else:
                row_start = time.perf_counter()
                try:
                    entry |= {"status": "ok", **row.run(ctx)}
                except KeyboardInterrupt:
                    raise
                except BaseException as error:  # one row failing (SystemExit included) must not stop the others
                    traceback.print_exc()
                    entry |= {"status": "failed", "reason": one_line(error)}
                    if cuda_ok:
                        torch.cuda.empty_cache()
                entry["seconds"] = round(time.perf_counter() - row_start, 2)
                entry["estimate_s"] = round(estimate, 1)
                spent += entry["seconds"]
                estimated += row.estimate_dry_s if args.dry_run else row.estimate_s
            report["rows"].append(entry)
            report["wall_s"] = round(time.perf_counter() - started, 2)
            write_report(report, args.out)
            if entry["status"] == "ok":
                print(f"[{report['wall_s']:6.1f} s] {row.key}: {entry['label']} {fmt(entry['value'])} {entry['unit']}, "
                      f"{entry['baseline_label']} {fmt(entry['baseline'])}: {entry['ratio']:.2f}x "
                      f"({entry['seconds']:.1f} s)", flush=True)
            else:
                print(f"[{report['wall_s']:6.1f} s] {row.key}: {entry['status']}: {entry['reason']}", flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 2)
    write_report(report, args.out)
    print(f"\n{markdown(report)}\nwritten: {args.out / 'gpu_suite.json'}, {args.out / 'gpu_suite.md'}", flush=True)
    return 1 if any(row["status"] == "failed" for row in report["rows"]) else 0  # skipped rows are no failure


if __name__ == "__main__":
    raise SystemExit(main())
