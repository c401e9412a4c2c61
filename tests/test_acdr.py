"""ACDR on synthetic feature sequences: shapes and padding, no labels at inference, losses and their
gradients, overfitting a tiny batch, and training through the real trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.store import Provenance, ShardWriter
from cslr_pipe.features.manifest import ManifestRow, build_vocabulary, write_manifest, write_vocabulary
from cslr_pipe.training.data import collate_padded
from cslr_pipe.training.decoding import greedy_decode
from cslr_pipe.training.models.acdr import build_acdr
from cslr_pipe.training.models.ctc import TemporalConv
from cslr_pipe.training.trainer import Run, TrainConfig, load_checkpoint, load_model, train

STREAM = "features.rgb"
NUM_GLOSSES = 4  # ids 1..4, 0 is the blank
DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def sentence(rng: np.random.Generator, directions: np.ndarray, glosses: list[int]) -> np.ndarray:
    """12-step bursts of a gloss-specific direction separated by noise."""
    parts = [rng.normal(0, 0.3, size=(6, DIM))]
    for gloss in glosses:
        parts += [directions[gloss - 1] + rng.normal(0, 0.3, size=(12, DIM)), rng.normal(0, 0.3, size=(4, DIM))]
    return np.concatenate(parts).astype(np.float32)


def make_batch(glosses: list[list[int]], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(123).normal(size=(NUM_GLOSSES, DIM))
    items = [{"id": f"s{i}", "inputs": {STREAM: torch.from_numpy(sentence(rng, directions, g))},
              "labels": torch.tensor(g)} for i, g in enumerate(glosses)]
    return collate_padded(items)


def model(**options):
    defaults = {"hidden": 64, "heads": 4, "dropout": 0.0, "lstm_layers": 1, "refiner_layers": 1}
    config = TrainConfig(model="acdr", streams=[STREAM], model_options={**defaults, **options})
    return build_acdr(config, {STREAM: DIM}, NUM_GLOSSES + 1)


@pytest.mark.parametrize("refine", [False, True])
def test_recognize_shapes_and_padding_invariance(refine):
    torch.manual_seed(0)
    net = model(refine_at_inference=refine).eval()
    batch = make_batch([[1, 2, 3], [4], [2, 2]])
    with torch.no_grad():
        log_probs, lengths = net.recognize(batch)
        assert log_probs.shape[:2] == (3, int(lengths.max())) and log_probs.shape[2] == NUM_GLOSSES + 1
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))
        assert lengths.tolist() == TemporalConv.output_lengths(batch["lengths"]).tolist()
        torch.manual_seed(1)
        losses = net.losses(batch)

        short = int(batch["lengths"].argmin())
        batch["inputs"][STREAM][short, batch["lengths"][short]:] = 5 * torch.randn_like(
            batch["inputs"][STREAM][short, batch["lengths"][short]:])
        log_probs2, lengths2 = net.recognize(batch)
        torch.manual_seed(1)
        losses2 = net.losses(batch)
    torch.testing.assert_close(log_probs2, log_probs)
    assert torch.equal(lengths2, lengths)
    for name, value in losses.items():
        torch.testing.assert_close(losses2[name], value, msg=name)


@pytest.mark.parametrize("refine", [False, True])
def test_recognize_never_reads_labels(refine):
    net = model(refine_at_inference=refine).eval()
    batch = make_batch([[1, 2], [3]])
    del batch["labels"], batch["label_lengths"]
    with torch.no_grad():
        log_probs, lengths = net.recognize(batch)
    assert torch.isfinite(log_probs).all() and lengths.shape == (2,)


def test_losses_are_positive_and_the_refiner_losses_train_the_base():
    torch.manual_seed(0)
    net = model(refine_at_inference=True).train()
    losses = net.losses(make_batch([[1, 2, 3], [4], [2, 2]]))
    assert set(losses) == {"loss", "ctc", "rec", "sem"}
    for name, value in losses.items():
        assert torch.isfinite(value) and value > 0, name
    torch.testing.assert_close(losses["loss"], losses["ctc"] + losses["rec"] + losses["sem"])
    base = [p for name, p in net.base.named_parameters() if not name.startswith("classifier")]
    for name in ("rec", "sem"):
        grads = torch.autograd.grad(losses[name], base, retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    # every parameter is in the graph of "loss" (DistributedDataParallel needs that)
    grads = torch.autograd.grad(losses["loss"], list(net.parameters()), allow_unused=True)
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("refine", [False, True])
def test_overfits_a_tiny_batch(refine):
    torch.manual_seed(0)
    glosses = [[1, 2, 3], [4, 1], [2, 4, 3], [3]]
    batch = make_batch(glosses)
    net = model(refine_at_inference=refine)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        net.train()
        loss = net.losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        log_probs, lengths = net.recognize(batch)
    assert greedy_decode(log_probs, lengths) == glosses


@pytest.fixture(scope="module")
def feature_corpus(tmp_path_factory):
    """A tiny feature cache: 12 train, 4 dev sentences of glosses A..D."""
    root = tmp_path_factory.mktemp("acdr-features")
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(NUM_GLOSSES, DIM))
    names = ["A", "B", "C", "D"]
    rows, arrays = [], {}
    for i in range(16):
        glosses = [int(g) for g in rng.integers(1, NUM_GLOSSES + 1, size=rng.integers(1, 4))]
        rows.append(ManifestRow(f"s{i:02d}", "train" if i < 12 else "dev", f"v{i}.mp4",
                                tuple(names[g - 1] for g in glosses)))
        arrays[rows[-1].id] = sentence(rng, directions, glosses).astype(np.float16)
    write_manifest(rows, root / "manifest.jsonl")
    write_vocabulary(build_vocabulary(rows), root / "manifest.vocab.json")
    with ShardWriter(root / "cache" / STREAM, 0, [r.id for r in rows], Provenance(STREAM, "test", {})) as writer:
        for row in rows:
            writer.write(row.id, {STREAM: arrays[row.id]})
        writer.commit()
    return root


def test_trains_with_the_trainer_and_reloads(feature_corpus, tmp_path):
    vocabulary = json.loads((feature_corpus / "manifest.vocab.json").read_text())
    config = TrainConfig(model="acdr", streams=[STREAM], epochs=2, batch_size=4, lr=3e-3, device="cpu",
                         model_options={"hidden": 32, "heads": 4, "dropout": 0.1, "refiner_layers": 1,
                                        "refine_at_inference": True})
    summary = train(config, Run(feature_corpus / "manifest.jsonl", vocabulary, feature_corpus / "cache",
                                tmp_path / "run"), log=lambda _: None)
    assert summary["epochs"] == 2
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(h[f"train_{k}"]) for h in history for k in ("loss", "ctc", "rec", "sem"))
    net, state = load_model(tmp_path / "run" / "last.pt")
    assert not net.training and net.config.refine_at_inference
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with torch.no_grad():
        log_probs, lengths = net.recognize(make_batch([[1, 2], [3]]))
    assert torch.isfinite(log_probs).all()


def test_unknown_option_is_an_error():
    with pytest.raises(InputError, match="unknown acdr option.*lamda_rec"):
        model(lamda_rec=1.0)
    with pytest.raises(InputError, match="mask_ratio"):
        model(mask_ratio=1.5)
