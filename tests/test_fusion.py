"""SignVTCL-style fusion: the fusion equations on small tensors, the alignment ground truth G and the
CTC alignment, padding and label independence, overfitting a tiny batch with every fusion method, a
single stream, and training a 3-stream cache through the trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.training.alignment import ctc_forced_alignment
from cslr_pipe.training.data import collate_padded
from cslr_pipe.training.decoding import greedy_decode
from cslr_pipe.training.models.ctc import TemporalConv
from cslr_pipe.training.models.fusion import (AttentionFusion, ConvFusion, MLPFusion, alignment_ground_truth,
                                              build_fusion, multi_positive_contrastive, segment_means)
from cslr_pipe.training.trainer import Run, TrainConfig, load_checkpoint, load_model, train
from conftest import write_feature_cache

STREAMS = ["features.rgb", "features.keypoint", "features.flow"]
SHAPES = {"features.rgb": (16,), "features.keypoint": (4, 3), "features.flow": (8,)}
NUM_GLOSSES = 4  # ids 1..4, 0 is the blank


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def directions(stream: str) -> np.ndarray:
    seed = STREAMS.index(stream)
    return np.random.default_rng(100 + seed).normal(size=(NUM_GLOSSES, int(np.prod(SHAPES[stream]))))


def sentence(rng: np.random.Generator, glosses: list[int], streams=STREAMS) -> dict[str, np.ndarray]:
    """Every stream: 12-step bursts of a gloss- and stream-specific direction separated by noise;
    the flow-like stream has one step fewer than the others."""
    steps = [(None, 6)] + [x for g in glosses for x in ((g, 12), (None, 4))]
    out = {}
    for stream in streams:
        d = directions(stream)
        parts = [(d[g - 1] if g else 0) + rng.normal(0, 0.4, size=(n, d.shape[1])) for g, n in steps]
        x = np.concatenate(parts).astype(np.float32).reshape(-1, *SHAPES[stream])
        out[stream] = x[1:] if stream == "features.flow" else x
    return out


def make_batch(glosses: list[list[int]], streams=STREAMS, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = [{"id": f"s{i}", "inputs": {s: torch.from_numpy(x) for s, x in sentence(rng, g, streams).items()},
              "labels": torch.tensor(g)} for i, g in enumerate(glosses)]
    return collate_padded(items)


def model(streams=STREAMS, **options):
    defaults = {"hidden": 32, "heads": 4, "dropout": 0.0, "lstm_layers": 1}
    config = TrainConfig(model="fusion", streams=list(streams), model_options={**defaults, **options})
    return build_fusion(config, {s: int(np.prod(SHAPES[s])) for s in streams}, NUM_GLOSSES + 1)


# ------------------------------------------------------------------------------------ fusion equations

def branch_features(seed=0, batch=2, steps=7, hidden=8, branches=3):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, steps, hidden, generator=generator) for _ in range(branches)]


def test_mlp_fusion_follows_eq_1_2_and_is_the_identity_with_a_zero_last_layer():
    torch.manual_seed(0)
    feats = branch_features()
    fusion = MLPFusion(3, 8)
    first, last = fusion.mlp[0], fusion.mlp[2]
    cat = torch.cat(feats, -1)
    expected_m = nn.functional.gelu(cat @ first.weight.T + first.bias) @ last.weight.T + last.bias
    lengths = torch.tensor([7, 5])
    out = fusion(feats, lengths)
    assert len(out) == 3
    for f, o in zip(feats, out):
        assert o.shape == f.shape
        torch.testing.assert_close(o, f + expected_m)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    for f, o in zip(feats, fusion(feats, lengths)):
        torch.testing.assert_close(o, f, rtol=0, atol=0)


def test_conv_fusion_follows_eq_3_4_as_a_temporal_convolution():
    torch.manual_seed(0)
    feats = branch_features()
    fusion = ConvFusion(3, 8, kernel=3)
    cat = torch.cat(feats, -1)  # (B, T, 3H)
    padded = nn.functional.pad(cat, (0, 0, 1, 1))
    weight = fusion.conv.weight  # (H, 3H, 3)
    expected_m = sum(padded[:, k:k + 7] @ weight[:, :, k].T for k in range(3)) + fusion.conv.bias
    out = fusion(feats, torch.tensor([7, 7]))
    for f, o in zip(feats, out):
        torch.testing.assert_close(o, f + expected_m)
    with torch.no_grad():
        fusion.conv.weight.zero_()
        fusion.conv.bias.zero_()
    for f, o in zip(feats, fusion(feats, torch.tensor([7, 7]))):
        torch.testing.assert_close(o, f, rtol=0, atol=0)


def test_attention_fusion_follows_eq_5_7_and_masks_padded_keys():
    torch.manual_seed(0)
    feats = branch_features()
    fusion = AttentionFusion(3, 8, heads=2, dropout=0.0).eval()
    lengths = torch.tensor([7, 4])
    pad = torch.arange(7) >= lengths[:, None]
    attend = dict(zip(fusion.pairs, fusion.attend))
    assert sorted(attend) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    out = fusion(feats, lengths)
    for s in range(3):
        others = [r for r in range(3) if r != s]
        expected = feats[s] + sum(attend[(s, r)](feats[s], feats[r], pad) for r in others)
        torch.testing.assert_close(out[s], expected)
    # keys past a sequence's length do not matter
    changed = [f.clone() for f in feats]
    for f in changed:
        f[1, 4:] = 10 * torch.randn(3, 8)
    for o, o2 in zip(out, fusion(changed, lengths)):
        torch.testing.assert_close(o2[1, :4], o[1, :4])
    # a zero output projection makes every cross-attention 0: the identity
    with torch.no_grad():
        for module in fusion.attend:
            module.attention.out_proj.weight.zero_()
            module.attention.out_proj.bias.zero_()
    for f, o in zip(feats, fusion(feats, lengths)):
        torch.testing.assert_close(o, f, rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda gate: MLPFusion(3, 8, gate), lambda gate: ConvFusion(3, 8, 3, gate),
                                  lambda gate: AttentionFusion(3, 8, 2, 0.0, gate)], ids=["mlp", "conv", "attention"])
def test_gated_fusion_starts_as_the_identity_and_is_the_paper_sum_at_alpha_1(make):
    feats, lengths = branch_features(), torch.tensor([7, 5])
    torch.manual_seed(0)
    plain = make(False).eval()
    torch.manual_seed(0)
    gated = make(True).eval()
    for f, o in zip(feats, gated(feats, lengths)):
        torch.testing.assert_close(o, f, rtol=0, atol=0)  # alpha = 0: the branches pass unchanged
    sum(o.square().sum() for o in gated([f.requires_grad_() for f in feats], lengths)).backward()
    assert gated.gate.alpha.grad.abs() > 0  # but alpha learns
    with torch.no_grad():
        gated.gate.alpha.fill_(1.0)
    for o, expected in zip(gated(feats, lengths), plain(feats, lengths)):
        torch.testing.assert_close(o, expected)  # same weights, alpha = 1: Eq. 1-7 exactly
    with torch.no_grad():
        gated.gate.alpha.fill_(0.5)
    for f, o, p in zip(feats, gated(feats, lengths), plain(feats, lengths)):
        torch.testing.assert_close(o, f + 0.5 * (p - f))


def test_single_stream_has_no_fusion_and_runs():
    torch.manual_seed(0)
    net = model(streams=["features.rgb"], fusion="attention").eval()
    assert len(net.fusion) == 0
    batch = make_batch([[1, 2], [3]], streams=["features.rgb"])
    with torch.no_grad():
        log_probs, lengths = net.recognize(batch)
    assert lengths.tolist() == TemporalConv.output_lengths(batch["lengths"]).tolist()
    assert log_probs.shape == (2, int(lengths.max()), NUM_GLOSSES + 1)
    assert set(net.losses(batch)) == {"loss", "ctc"}


# ----------------------------------------------------------------------- alignment: G, CTC path, loss

def test_ground_truth_g_marks_repeated_glosses():
    glosses = torch.tensor([3, 5, 3, 7, 5, 3])  # A B A C B A
    expected = torch.tensor([[1, 0, 1, 0, 0, 1],
                             [0, 1, 0, 0, 1, 0],
                             [1, 0, 1, 0, 0, 1],
                             [0, 0, 0, 1, 0, 0],
                             [0, 1, 0, 0, 1, 0],
                             [1, 0, 1, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(alignment_ground_truth(glosses), expected)
    assert torch.equal(alignment_ground_truth(torch.tensor([4, 2, 6])), torch.eye(3))
    # batched, with padding masked out of rows and columns
    padded = torch.tensor([[3, 5, 3], [2, 2, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    g = alignment_ground_truth(padded, valid)
    assert torch.equal(g[0], expected[:3, :3])
    assert torch.equal(g[1], torch.tensor([[1., 1, 0], [1, 1, 0], [0, 0, 0]]))


def test_ctc_forced_alignment_finds_the_viterbi_path_and_handles_repeats():
    # frames: blank A A blank A B | padding ; label A A B needs the blank between the two A's
    frames = [0, 1, 1, 0, 1, 2, 0, 0]
    log_probs = torch.full((2, 8, 3), math.log(0.05))
    for t, c in enumerate(frames):
        log_probs[0, t, c] = math.log(0.9)
    log_probs[1] = log_probs[0]
    labels = torch.tensor([1, 1, 2, 2, 1])  # item 0: A A B; item 1: B A
    position = ctc_forced_alignment(log_probs, torch.tensor([6, 8]), labels, torch.tensor([3, 2]))
    assert position[0].tolist() == [-1, 0, 0, -1, 1, 2, -1, -1]
    aligned = position[1][position[1] >= 0].tolist()  # B A over 8 frames: every gloss, in order
    assert aligned == sorted(aligned) and set(aligned) == {0, 1}
    # a label that cannot fit (3 glosses with a repeat need 4 frames) falls back to uniform segments
    short = ctc_forced_alignment(log_probs, torch.tensor([3, 3]), torch.tensor([1, 1, 2, 1, 1, 2]),
                                 torch.tensor([3, 3]))
    assert short[0].tolist()[:3] == [0, 1, 2] and short[0, 3:].eq(-1).all()
    means, counts = segment_means(torch.arange(16.).reshape(2, 8, 1), position, 3)
    assert counts[0].tolist() == [2, 1, 1]
    assert means[0, :, 0].tolist() == [1.5, 4.0, 5.0]


def test_multi_positive_contrastive_matches_a_hand_computation():
    sim = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.0, -1.0], [1.0, 0.0, 3.0]])
    g = alignment_ground_truth(torch.tensor([3, 5, 3]))
    valid = torch.ones(3, dtype=torch.bool)
    rows = -(torch.log_softmax(sim, 1) * g).sum(1) / g.sum(1)
    cols = -(torch.log_softmax(sim, 0) * g).sum(0) / g.sum(0)
    expected = 0.5 * (rows.mean() + cols.mean())
    torch.testing.assert_close(multi_positive_contrastive(sim, g, valid, valid), expected)
    # an invalid visual row (a gloss with no frames) leaves the rows and the columns' softmax
    row_valid = torch.tensor([True, True, False])
    g2 = g * row_valid[:, None]
    rows = -(torch.log_softmax(sim[:2], 1) * g2[:2]).sum(1) / g2[:2].sum(1)
    cols = -(torch.log_softmax(sim[:2], 0) * g2[:2]).sum(0) / g2[:2].sum(0)
    torch.testing.assert_close(multi_positive_contrastive(sim, g2, row_valid, valid),
                               0.5 * (rows.mean() + cols.mean()))


# --------------------------------------------------------------------------------------------- model

@pytest.mark.parametrize("fusion", ["mlp", "conv", "attention"])
def test_recognize_shapes_padding_invariance_and_no_labels(fusion):
    torch.manual_seed(0)
    net = model(fusion=fusion, gloss_align=True, sentence_align=True).eval()
    batch = make_batch([[1, 2, 3], [4], [2, 2]])
    with torch.no_grad():
        log_probs, lengths = net.recognize(batch)
        assert log_probs.shape == (3, int(lengths.max()), NUM_GLOSSES + 1)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))
        assert lengths.tolist() == TemporalConv.output_lengths(batch["lengths"]).tolist()
        losses = net.losses(batch)
        short = int(batch["lengths"].argmin())
        for stream in STREAMS:
            n = int(batch["stream_lengths"][stream][short])
            x = batch["inputs"][stream]
            x[short, n:] = 5 * torch.randn_like(x[short, n:])
        log_probs2, _ = net.recognize(batch)
        losses2 = net.losses(batch)
        torch.testing.assert_close(log_probs2, log_probs)
        for name, value in losses.items():
            torch.testing.assert_close(losses2[name], value, msg=name)
        del batch["labels"], batch["label_lengths"]
        torch.testing.assert_close(net.recognize(batch)[0], log_probs)


def test_alignment_losses_are_finite_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = model(fusion="mlp", gloss_align=True, sentence_align=True, lambda_gloss=0.5, branch_ctc=0.3).train()
    batch = make_batch([[1, 2, 1], [4], [2, 3], [1, 2, 1]])
    losses = net.losses(batch)
    assert set(losses) == {"loss", "ctc", "gloss_align", "sentence_align", "branch_ctc"}
    for name, value in losses.items():
        assert torch.isfinite(value) and value > 0, name
    torch.testing.assert_close(losses["loss"], losses["ctc"] + 0.5 * losses["gloss_align"] + losses["sentence_align"]
                               + 0.3 * losses["branch_ctc"])
    _, lengths, branches = net.encode_branches(batch)  # branch_ctc: the mean of every branch's own CTC
    per_branch = [nn.functional.ctc_loss(classify(f).log_softmax(-1).transpose(0, 1), batch["labels"], lengths,
                                         batch["label_lengths"], zero_infinity=True)
                  for classify, f in zip(net.branch_classifiers, branches)]
    torch.testing.assert_close(losses["branch_ctc"], sum(per_branch) / 3)
    grads = torch.autograd.grad(losses["loss"], list(net.parameters()), allow_unused=True)
    names = [name for name, _ in net.named_parameters()]
    assert [n for n, g in zip(names, grads) if g is None] == []  # DistributedDataParallel needs that
    assert model(fusion="mlp").alignment is None  # no embedding table unless an alignment is on


@pytest.mark.parametrize("fusion,align", [("mlp", False), ("conv", False), ("attention", False), ("mlp", True)])
def test_overfits_a_tiny_batch(fusion, align):
    torch.manual_seed(0)
    glosses = [[1, 2, 3], [4, 1], [2, 4, 3], [3, 3]]
    batch = make_batch(glosses)
    net = model(fusion=fusion, gloss_align=align, sentence_align=align)
    assert overfit(net, batch) == glosses


def overfit(net, batch, max_steps=120, every=10):
    """Adam steps on one batch until greedy decoding gives the labels (checked every few steps)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    references = [t.tolist() for t in batch["labels"].split(batch["label_lengths"].tolist())]
    for step in range(1, max_steps + 1):
        net.train()
        loss = net.losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == max_steps:
            net.eval()
            with torch.no_grad():
                decoded = greedy_decode(*net.recognize(batch))
            if decoded == references:
                break
    return decoded


def test_unknown_and_bad_options_are_errors():
    with pytest.raises(InputError, match="unknown fusion option.*fusoin.*known: .*fusion"):
        model(fusoin="mlp")
    with pytest.raises(InputError, match="fusion must be one of"):
        model(fusion="sum")
    with pytest.raises(InputError, match="fusion_stages"):
        model(fusion_stages=[1, 4])
    net = model(fusion="conv", fusion_stages="1,3")
    assert sorted(net.fusion) == ["1", "3"]
    assert len(model(fusion="none").fusion) == 0


# ------------------------------------------------------------------------------------ with the trainer

def write_cache(root, streams=STREAMS, videos=16):
    rng = np.random.default_rng(0)
    names = ["A", "B", "C", "D"]
    rows, arrays = [], {}
    for i in range(videos):
        glosses = [int(g) for g in rng.integers(1, NUM_GLOSSES + 1, size=rng.integers(1, 4))]
        rows.append(ManifestRow(f"s{i:02d}", "train" if i < 12 else "dev", f"v{i}.mp4",
                                tuple(names[g - 1] for g in glosses)))
        arrays[rows[-1].id] = sentence(rng, glosses, streams)
    return write_feature_cache(root, rows, arrays)


def test_trains_three_streams_with_the_trainer_and_reloads(tmp_path):
    root = write_cache(tmp_path / "corpus")
    vocabulary = json.loads((root / "manifest.vocab.json").read_text())
    options = {"fusion": "attention", "hidden": 32, "heads": 4, "lstm_layers": 1, "gloss_align": True,
               "sentence_align": True, "fusion_stages": [2, 3]}
    config = TrainConfig(model="fusion", streams=["rgb", "keypoint", "flow"], epochs=2, batch_size=4, lr=3e-3,
                         device="cpu", model_options=options)
    summary = train(config, Run(root / "manifest.jsonl", vocabulary, root / "cache", tmp_path / "run"),
                    log=lambda _: None)
    assert summary["epochs"] == 2
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(h[f"train_{k}"]) for h in history for k in ("loss", "ctc", "gloss_align", "sentence_align"))
    net, state = load_model(tmp_path / "run" / "last.pt")
    assert not net.training and net.config.fusion == "attention" and net.config.fusion_stages == (2, 3)
    assert net.streams == STREAMS  # short names were resolved to the cache's feature stages
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with torch.no_grad():
        log_probs, lengths = net.recognize(make_batch([[1, 2], [3]]))
    assert torch.isfinite(log_probs).all() and log_probs.shape[0] == 2
