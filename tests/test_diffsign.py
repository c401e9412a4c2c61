"""DiffSign: gloss layout, phases, the GFE loss against its formula, sampling with an oracle denoiser,
learning in both stages, and training through the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cslr_pipe.training.decoding import greedy_decode
from cslr_pipe.training.evaluation import evaluate_checkpoint
from cslr_pipe.training.models.diffsign import gloss_contrastive_loss
from cslr_pipe.training.models.layers import sinusoidal
from cslr_pipe.training.trainer import Run, TrainConfig, build_model, load_model, train

NUM_CLASSES, DIM = 5, 16
SMALL = dict(hidden=32, heads=4, gloss_layers=1, decoder_layers=2, dit_layers=2, gloss_tokens=12,
             dropout=0.0, train_sampling_steps=3, sampling_steps=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def make_model(**options):
    torch.manual_seed(0)
    config = TrainConfig.for_model("diffsign", streams=["f"], model_options={**SMALL, **options})
    return build_model(config, {"f": DIM}, NUM_CLASSES)


def make_batch(n=4, seed=0):
    """Gloss-specific directions held for 10 steps, separated by noise."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
    items = []
    for _ in range(n):
        labels = rng.integers(1, NUM_CLASSES, size=rng.integers(2, 4))
        parts = [rng.normal(0, 0.3, (4, DIM))]
        for gloss in labels:
            parts += [directions[gloss] + rng.normal(0, 0.3, (10, DIM)), rng.normal(0, 0.3, (3, DIM))]
        items.append((np.concatenate(parts).astype(np.float32), labels))
    lengths = torch.tensor([len(x) for x, _ in items])
    x = torch.zeros(n, int(lengths.max()), DIM)
    for b, (features, _) in enumerate(items):
        x[b, :len(features)] = torch.from_numpy(features)
    return {"ids": [f"s{i}" for i in range(n)], "inputs": {"f": x}, "lengths": lengths,
            "stream_lengths": {"f": lengths},
            "labels": torch.from_numpy(np.concatenate([labels for _, labels in items])).long(),
            "label_lengths": torch.tensor([len(labels) for _, labels in items])}


def references(batch):
    return [t.tolist() for t in batch["labels"].split(batch["label_lengths"].tolist())]


def test_gloss_layout_separates_repeats_and_rejects_long_labels():
    model = make_model()
    labels, lengths = torch.tensor([2, 2, 3, 1]), torch.tensor([3, 1])
    tokens = model.gloss.layout(labels, lengths, ["a", "b"])
    sep, pad = NUM_CLASSES, NUM_CLASSES + 1
    assert tokens.tolist() == [[2, sep, 2, sep, 3, sep] + [pad] * 6, [1, sep] + [pad] * 10]
    g = model.gloss(labels, lengths, ["a", "b"])
    torch.testing.assert_close(g.mean(-1), torch.zeros(2, 12), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="long-one: 7 glosses"):
        model.gloss.layout(torch.ones(7, dtype=torch.long), torch.tensor([7]), ["long-one"])


def test_phases_freeze_what_the_paper_freezes():
    model = make_model(stage1_fraction=0.4)
    assert model.phases(100) == [("stage1", 40), ("stage2", 60)]
    model.set_phase("stage1")
    assert all(p.requires_grad for p in model.visual.parameters())
    assert not any(p.requires_grad for p in model.dit.parameters())
    model.set_phase("stage2")
    model.train()
    assert not any(p.requires_grad for m in (model.visual, model.gloss, model.decoder) for p in m.parameters())
    assert all(p.requires_grad for p in model.dit.parameters())
    assert model.dit.training and not model.visual.training and not model.decoder.training
    with pytest.raises(ValueError, match="unknown phase"):
        model.set_phase("stage3")


def test_gloss_contrastive_loss_matches_its_formula():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4) * 2  # (B, tokens, anchors)
    logits[0, :, 1] = torch.tensor([0.1, 0.05, -0.3])  # flat attention: best token below tau
    pad = torch.tensor([[False, False, False, False], [False, False, True, True]])
    tau = 0.5
    terms = []
    for b in range(2):
        for j in range(4):
            if pad[b, j]:
                continue
            attention = torch.softmax(logits[b, :, j], 0)
            if attention.max() >= tau:
                terms.append(-torch.log(attention[attention.argmax()]))
            else:  # a transition: no positive, pushed away from every token
                terms.append(torch.log(1 + logits[b, :, j].exp().sum()))
    assert any(torch.softmax(logits[b, :, j], 0).max() < tau for b in range(2) for j in range(2))
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(gloss_contrastive_loss(logits, pad, tau), expected)


def test_step_weights_carry_the_papers_total_weight():
    assert make_model().step_weights(4).tolist() == [0.25] * 4  # the default: uniform
    model = make_model(num_steps=1000, rsm_weights="delta")
    weights = model.step_weights(4)
    assert weights[0] < weights[-1]
    full_chain = torch.linspace(1e-4, 0.01, 1000, dtype=torch.float64).sum()
    assert float(weights.sum()) == pytest.approx(float(full_chain), rel=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "x0"])
def test_sampling_with_an_oracle_denoiser_recovers_the_labels(prediction):
    """With a denoiser that knows G, DDIM ends exactly on G, and the decoder reads the labels."""
    model = make_model(prediction=prediction)
    batch = make_batch()
    model.set_phase("stage1")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):  # the decoder learns to read G
        loss = model(batch)["ctc_gloss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        g = model.gloss(batch["labels"], batch["label_lengths"], batch["ids"])

    def oracle(x_t, t, memory, memory_pad, previous_x0=None, prior=None):
        if prediction == "x0":
            return g, None
        return model.diffusion.predict_eps_from_x0(x_t, t, g), None

    model.dit.forward = oracle
    model.set_phase("stage2")
    model.eval()
    with torch.no_grad():
        v, v_pad = model.encode_video(batch)
        timesteps = model.diffusion.ddim_timesteps(4).tolist()
        torch.testing.assert_close(model.generate(v, v_pad, timesteps)[0], g, atol=1e-4, rtol=0)
        log_probs, lengths = model.recognize({k: val for k, val in batch.items() if k != "labels"})
    assert lengths.tolist() == [12] * 4
    assert greedy_decode(log_probs, lengths) == references(batch)


def fit(model, batch, phase, steps, lr):
    """Adam with a cosine schedule on one batch."""
    model.set_phase(phase)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        losses = model(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
    model.eval()


@pytest.fixture(scope="module")
def memorised():
    """A model whose two stages memorised a tiny batch, and the batch."""
    torch.set_num_threads(1)
    model, batch = make_model(hidden=64), make_batch(seed=5)  # labels with repeats: 3 4 4, 3 2 2
    fit(model, batch, "stage1", 150, 3e-3)
    with torch.no_grad():
        assert greedy_decode(*model.recognize(batch)) == references(batch)  # the visual path
    frozen = [p.clone() for p in model.decoder.parameters()]
    torch.manual_seed(1)
    fit(model, batch, "stage2", 1000, 2e-3)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.decoder.parameters()))
    return model, batch


@pytest.mark.parametrize("steps", [1, 4, 10, 0])
def test_generated_glosses_decode_to_the_labels(memorised, steps):
    """G' sampled from noise (DDIM in 1, 4, 10 steps; 0 = the 1000-step DDPM chain) decodes to the labels."""
    model, batch = memorised
    unlabelled = {k: v for k, v in batch.items() if k != "labels"} | {"labels": torch.zeros(0, dtype=torch.long)}
    with torch.no_grad():
        log_probs, lengths = model.recognize(unlabelled, sampling_steps=steps)
    assert lengths.tolist() == [SMALL["gloss_tokens"]] * 4
    assert greedy_decode(log_probs, lengths) == references(batch)
    assert references(batch)[1] == [3, 4, 4]


def test_sampling_is_seeded_per_video(memorised):
    """The same seed gives the same G' whatever the batch; another seed draws another x_T."""
    model, batch = memorised
    with torch.no_grad():
        v, pad = model.encode_video(batch)
        noise = model.initial_noise(batch["ids"], "cpu")
        torch.testing.assert_close(model.initial_noise(batch["ids"][2:], "cpu"), noise[2:], rtol=0, atol=0)
        first, again = model.recognize(batch)[0], model.recognize(batch)[0]
        model.config.sampling_seed = 7
        other = model.initial_noise(batch["ids"], "cpu")
        model.config.sampling_seed = 0
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (other - noise).abs().mean() > 0.5


def test_loading_a_checkpoint_keeps_the_slot_code():
    """Resuming into stage 2 loads stage 1's weights: the fixed slot code must survive (it is no parameter)."""
    trained, fresh = make_model(), make_model()
    with torch.no_grad():
        for p in trained.dit.parameters():
            p.add_(1.0)
    fresh.load_state_dict(trained.state_dict())
    assert "dit.slot_code" not in trained.state_dict()
    code = sinusoidal(torch.arange(SMALL["gloss_tokens"]), SMALL["hidden"])[None]
    torch.testing.assert_close(fresh.dit.slot_code, code, rtol=0, atol=0)
    assert not make_model(ordinal_keys=False).dit.slot_code.any()


def test_training_grids():
    model = make_model(train_sampling_steps=5)
    torch.manual_seed(0)
    grids = [model.training_grid() for _ in range(200)]
    assert {len(g) for g in grids} == {1, 2, 3, 4, 5}
    assert all(g[0] == 999 and all(a > b for a, b in zip(g, g[1:])) for g in grids)
    assert min(min(g) for g in grids) < 100  # the random grid reaches low noise levels too
    assert make_model(train_grid="fixed", train_sampling_steps=4).training_grid() == [999, 749, 499, 249]


def test_ablation_switches_turn_losses_off():
    model = make_model(use_rsm=False, use_gfe=False)
    model.set_phase("stage2")
    losses = model(make_batch(2))
    assert float(losses["rsm"]) == 0 and float(losses["gfe"]) == 0
    with pytest.raises(ValueError, match="unknown diffsign option"):
        make_model(dit_depth=3)


def test_trainer_runs_both_stages_and_reloads(feature_corpus, tmp_path):
    vocabulary = json.loads((feature_corpus / "manifest.vocab.json").read_text())
    run = Run(feature_corpus / "manifest.jsonl", vocabulary, feature_corpus / "cache", tmp_path / "run")
    config = TrainConfig.for_model("diffsign", streams=["features.rgb"], epochs=2, batch_size=8, lr=1e-3,
                                   model_options={**SMALL, "stage1_fraction": 0.5})
    assert config.optimizer == "adam" and config.lr_schedule == "step"  # the paper's defaults stay
    logged = []
    train(config, run, log=logged.append)
    assert "phase stage1: epochs 0-0" in logged and "phase stage2: epochs 1-1" in logged
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["stage1", "stage2"]
    assert "train_ddm" in history[1] and "train_ctc_gloss" in history[0]
    model, state = load_model(tmp_path / "run" / "best.pt")
    assert bool(model.generating) and state["epoch"] == 1  # best of the last phase

    lines = evaluate_checkpoint(tmp_path / "run" / "best.pt", feature_corpus / "manifest.jsonl",
                                feature_corpus / "cache", "dev", samples=2, mean_log_probs=True, device="cpu").lines
    assert lines[0].startswith("dev [x_T seed 0]: WER") and lines[1].startswith("dev [x_T seed 1]: WER")
    assert lines[2].startswith("dev [mean-log-probs of 2 seeds]: WER") and "mean ± sd over 2 x_T seeds" in lines[3]
    written = sorted(p.name for p in (tmp_path / "run").glob("dev-best-*.hyp.jsonl"))
    assert written == ["dev-best-mean-log-probs.hyp.jsonl", "dev-best-seed=0.hyp.jsonl", "dev-best-seed=1.hyp.jsonl"]


def test_ordinal_keys_place_frames_at_their_gloss_slot():
    model = make_model(ordinal_keys=True)
    model.eval()
    frames = [1, 1, 0, 2, 2, 2, 0, 0]  # argmax labels of 8 frames: gloss, gloss, blank, gloss x3, blank
    log_probs = torch.full((1, 8, NUM_CLASSES), -30.0)
    log_probs[0, torch.arange(8), torch.tensor(frames)] = 0.0
    model.decoder.forward = lambda v, pad=None, return_hidden=False: (log_probs, 2 * v)  # hidden: 2 V
    v, pad = torch.zeros(1, 8, SMALL["hidden"]), torch.zeros(1, 8, dtype=torch.bool)
    slots = torch.tensor([[0.0, 0, 0, 2, 2, 2, 2, 2]])  # 2 (ordinal - 1): the layout's g1 and g2 slots
    expected = sinusoidal(slots, SMALL["hidden"])
    memory, prior = model.condition(v, pad)
    torch.testing.assert_close(memory, expected, atol=1e-4, rtol=0)
    s, j = 2, 1  # slot 2 against frame 1 (slot 0): -(2 - 0)^2 / 2
    assert float(prior[0, s, j]) == pytest.approx(-2.0) and float(prior[0, s, 3]) == 0.0
    paper = make_model(ordinal_keys=False, alignment_prior=0, memory="visual")
    memory, prior = paper.condition(v, pad)
    assert memory is v and prior is None  # the paper's DiT sees V alone
    model.config.ordinal_keys = False  # the default memory: the decoder's hidden states over V
    torch.testing.assert_close(model.condition(v + 1, pad)[0], 2 * (v + 1), rtol=0, atol=0)
