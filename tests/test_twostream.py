"""TwoStream: the late ensemble and the self-distillation loss against hand computations, shapes,
padding and label independence, gradients, overfitting a tiny batch, and the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.training.data import collate_padded
from cslr_pipe.training.decoding import greedy_decode
from cslr_pipe.training.models.ctc import TemporalConv
from cslr_pipe.training.models.twostream import build_twostream, ensemble_log_probs, self_distillation_loss
from cslr_pipe.training.trainer import Run, TrainConfig, load_checkpoint, load_model, train
from conftest import write_feature_cache

STREAMS = ["features.rgb", "features.keypoint"]
DIMS = {"features.rgb": 16, "features.keypoint": 12}
NUM_GLOSSES = 4  # ids 1..4, 0 is the blank


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def sentence(rng: np.random.Generator, glosses: list[int]) -> dict[str, np.ndarray]:
    """Both streams: 12-step bursts of a gloss- and stream-specific direction separated by noise."""
    steps = [(None, 6)] + [x for g in glosses for x in ((g, 12), (None, 4))]
    out = {}
    for k, stream in enumerate(STREAMS):
        d = np.random.default_rng(200 + k).normal(size=(NUM_GLOSSES, DIMS[stream]))
        out[stream] = np.concatenate([(d[g - 1] if g else 0) + rng.normal(0, 0.4, size=(n, DIMS[stream]))
                                      for g, n in steps]).astype(np.float32)
    return out


def make_batch(glosses: list[list[int]], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = [{"id": f"s{i}", "inputs": {s: torch.from_numpy(x) for s, x in sentence(rng, g).items()},
              "labels": torch.tensor(g)} for i, g in enumerate(glosses)]
    return collate_padded(items)


def model(streams=STREAMS, **options):
    defaults = {"hidden": 32, "dropout": 0.0, "lstm_layers": 1}
    config = TrainConfig(model="twostream", streams=list(streams), model_options={**defaults, **options})
    return build_twostream(config, {s: DIMS.get(s, 8) for s in streams}, NUM_GLOSSES + 1)


def test_ensemble_averages_the_heads_probabilities():
    p = [torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]),
         torch.tensor([[[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]),
         torch.tensor([[[0.4, 0.5, 0.1], [0.0001, 0.0999, 0.9]]])]
    expected = torch.tensor([[[0.4, 0.5, 0.1], [0.1000333, 0.1333, 0.7666667]]])
    out = ensemble_log_probs([x.log() for x in p])
    torch.testing.assert_close(out.exp(), expected, atol=1e-4, rtol=0)


def test_self_distillation_is_the_kl_from_the_detached_ensemble():
    p = [torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]]),
         torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.2, 0.8]])]
    lengths = torch.tensor([2])  # the third frame is padding
    log_probs = [x.log()[None].requires_grad_() for x in p]
    loss = self_distillation_loss(log_probs, lengths)
    teacher = [[0.3, 0.7], [0.7, 0.3]]
    expected = 0.0
    for head in p:
        kl = [sum(q * np.log(q / float(head[t, c])) for c, q in enumerate(teacher[t])) for t in range(2)]
        expected += sum(kl) / 2
    assert abs(float(loss.detach()) - expected) < 1e-5
    # the teacher is detached: the gradient of a head is -teacher / 2 frames (d/dlog p of -sum q log p)
    grad = torch.autograd.grad(loss, log_probs[0])[0][0]
    torch.testing.assert_close(grad[:2], -torch.tensor(teacher) / 2)
    assert torch.equal(grad[2], torch.zeros(2))


@pytest.mark.parametrize("head", ["conv", "lstm"])
def test_recognize_shapes_padding_invariance_and_no_labels(head):
    torch.manual_seed(0)
    net = model(head=head, aux_ctc=0.5).eval()
    batch = make_batch([[1, 2, 3], [4], [2, 2]])
    with torch.no_grad():
        log_probs, lengths = net.recognize(batch)
        assert log_probs.shape == (3, int(lengths.max()), NUM_GLOSSES + 1)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))
        assert lengths.tolist() == TemporalConv.output_lengths(batch["lengths"]).tolist()
        heads = net.head_log_probs(*net.encode(batch))
        torch.testing.assert_close(log_probs, ensemble_log_probs(list(heads.values())))
        losses = net.losses(batch)
        short = int(batch["lengths"].argmin())
        for x in batch["inputs"].values():
            x[short, int(batch["lengths"][short]):] = 5 * torch.randn_like(x[short, int(batch["lengths"][short]):])
        torch.testing.assert_close(net.recognize(batch)[0], log_probs)
        for name, value in net.losses(batch).items():
            torch.testing.assert_close(value, losses[name], msg=name)
        del batch["labels"], batch["label_lengths"]
        torch.testing.assert_close(net.recognize(batch)[0], log_probs)
        net.config.decode = "joint"
        torch.testing.assert_close(net.recognize(batch)[0], heads["joint"])


def test_losses_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = model(aux_ctc=0.5, lambda_distill=2.0).train()
    losses = net.losses(make_batch([[1, 2, 1], [4], [2, 3]]))
    assert set(losses) == {"loss", "ctc_video", "ctc_keypoint", "ctc_joint", "distill", "aux_ctc"}
    for name, value in losses.items():
        assert torch.isfinite(value) and value > 0, name
    torch.testing.assert_close(losses["loss"], losses["ctc_video"] + losses["ctc_keypoint"] + losses["ctc_joint"]
                               + 2.0 * losses["distill"] + 0.5 * losses["aux_ctc"])
    grads = torch.autograd.grad(losses["loss"], list(net.parameters()), allow_unused=True)
    assert [n for (n, _), g in zip(net.named_parameters(), grads) if g is None] == []
    plain = model(lateral=False, lambda_distill=0.0)
    assert not hasattr(plain, "lateral") and not hasattr(plain, "pyramids")
    assert set(plain.losses(make_batch([[1], [2]]))) == {"loss", "ctc_video", "ctc_keypoint", "ctc_joint"}


@pytest.mark.parametrize("head", ["conv", "lstm"])
def test_overfits_a_tiny_batch(head):
    torch.manual_seed(0)
    glosses = [[1, 2, 3], [4, 1], [2, 4, 3], [3, 3]]
    batch = make_batch(glosses)
    net = model(head=head, aux_ctc=0.5)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(1, 121):
        net.train()
        loss = net.losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            net.eval()
            with torch.no_grad():
                decoded = greedy_decode(*net.recognize(batch))
            if decoded == glosses:
                break
    assert decoded == glosses


def test_needs_two_streams_and_known_options():
    with pytest.raises(InputError, match="exactly two streams"):
        model(streams=["features.rgb"])
    with pytest.raises(InputError, match="exactly two streams"):
        model(streams=["a", "b", "c"])
    with pytest.raises(InputError, match="unknown twostream option.*lambda_distil.*known"):
        model(lambda_distil=1.0)
    with pytest.raises(InputError, match="decode must be"):
        model(decode="average")


def test_trains_with_the_trainer_and_reloads(tmp_path):
    root = tmp_path / "corpus"
    rng = np.random.default_rng(0)
    rows, arrays = [], {}
    for i in range(16):
        glosses = [int(g) for g in rng.integers(1, NUM_GLOSSES + 1, size=rng.integers(1, 4))]
        rows.append(ManifestRow(f"s{i:02d}", "train" if i < 12 else "dev", f"v{i}.mp4",
                                tuple("ABCD"[g - 1] for g in glosses)))
        arrays[rows[-1].id] = sentence(rng, glosses)
    write_feature_cache(root, rows, arrays)
    vocabulary = json.loads((root / "manifest.vocab.json").read_text())
    config = TrainConfig(model="twostream", streams=STREAMS, epochs=2, batch_size=4, lr=3e-3, device="cpu",
                         model_options={"hidden": 32, "aux_ctc": 0.5})
    summary = train(config, Run(root / "manifest.jsonl", vocabulary, root / "cache", tmp_path / "run"),
                    log=lambda _: None)
    assert summary["epochs"] == 2
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(h[f"train_{k}"]) for h in history
               for k in ("loss", "ctc_video", "ctc_keypoint", "ctc_joint", "distill", "aux_ctc"))
    net, _ = load_model(tmp_path / "run" / "last.pt", model_options={"decode": "keypoint"})
    assert not net.training and net.config.decode == "keypoint"
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with torch.no_grad():
        log_probs, _ = net.recognize(make_batch([[1, 2], [3]]))
    assert torch.isfinite(log_probs).all()
