"""DiffSign: gloss layout, phases, the GFE loss against its formula, sampling with an oracle denoiser,
learning in both stages, and training through the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.weights import CheckpointError
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
    assert model.phases(2) == [("stage1", 1), ("stage2", 1)] and model.phases(1) == [("stage1", 1), ("stage2", 0)]
    assert make_model(stage1_fraction=0.0).phases(10)[0] == ("stage1", 1)  # stage 2 needs a trained stage 1
    model.set_phase("stage1")
    assert all(p.requires_grad for m in (model.visual, model.gloss, model.decoder) for p in m.parameters())
    assert not any(p.requires_grad for p in model.dit.parameters())
    model.set_phase("stage2")
    model.train()
    assert not any(p.requires_grad for m in (model.gloss, model.decoder) for p in m.parameters())
    assert all(p.requires_grad for m in (model.dit, model.visual) for p in m.parameters())  # stage2_visual=train
    assert model.dit.training and model.visual.training and not model.decoder.training
    paper = make_model(stage2_visual="frozen")
    paper.set_phase("stage2")
    paper.train()
    assert not any(p.requires_grad for p in paper.visual.parameters()) and not paper.visual.training
    assert "ctc_visual" not in paper(make_batch(2)) and "ctc_visual" in model(make_batch(2))
    with pytest.raises(ValueError, match="unknown phase"):
        model.set_phase("stage3")


def test_stage1_reads_as_the_ctc_baseline_learns():
    """Stage 1's reading is the ctc baseline's: from the same weights and the same steps it gives the same
    log-probs (the gloss encoder and decoder never reach the visual encoder), and decodes the batch."""
    batch = make_batch(seed=3)
    diffsign = make_model(hidden=64, lstm_layers=2)
    ctc = build_model(TrainConfig.for_model("ctc", streams=["f"], model_options={"hidden": 64, "dropout": 0.0}),
                      {"f": DIM}, NUM_CLASSES)
    ctc.net.load_state_dict(diffsign.visual.state_dict())
    fit(ctc, batch, None, 120, 3e-3)
    fit(diffsign, batch, "stage1", 120, 3e-3)
    with torch.no_grad():
        ours, theirs = diffsign.recognize(batch)[0], ctc.recognize(batch)[0]
    assert greedy_decode(theirs, ctc.recognize(batch)[1]) == references(batch)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


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
    """Adam with a cosine schedule on one batch (``phase`` None: a model without phases)."""
    if phase:
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
    fit(model, batch, "stage1", 500, 3e-3)  # the decoder must read G: the rarest gloss takes longest
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
        log_probs, lengths = model.recognize(unlabelled, sampling_steps=steps, rescore=False)  # G' alone
    assert lengths.tolist() == [SMALL["gloss_tokens"]] * 4
    assert greedy_decode(log_probs, lengths) == references(batch)
    assert references(batch)[1] == [3, 4, 4]


@pytest.mark.parametrize("steps", [4, 0])
def test_a_videos_hypothesis_does_not_depend_on_its_batch(memorised, steps):
    """DDIM (4 steps) and DDPM (0: 1000 ancestral steps, fresh noise at each): a video decoded alone gives
    the log-probs it gets inside a shuffled batch, since x_T and the step noise come from its own stream."""
    model, batch = memorised
    order = [2, 0, 3, 1]
    shuffled = {"ids": [batch["ids"][i] for i in order], "inputs": {"f": batch["inputs"]["f"][order]},
                "lengths": batch["lengths"][order], "stream_lengths": {"f": batch["stream_lengths"]["f"][order]}}
    with torch.no_grad():
        together = model.recognize(shuffled, sampling_steps=steps, rescore=False)[0]
        for position, i in enumerate(order):
            n = int(batch["lengths"][i])
            alone = {"ids": [batch["ids"][i]], "inputs": {"f": batch["inputs"]["f"][i:i + 1, :n]},
                     "lengths": batch["lengths"][i:i + 1], "stream_lengths": {"f": batch["stream_lengths"]["f"][i:i + 1]}}
            own = model.recognize(alone, sampling_steps=steps, rescore=False)[0]
            assert greedy_decode(own, torch.tensor([own.shape[1]]))[0] == references(batch)[i]
            torch.testing.assert_close(own[0], together[position], atol=2e-4, rtol=0)


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
    with pytest.raises(InputError, match="unknown diffsign option"):
        make_model(dit_depth=3)


def test_trainer_runs_both_stages_and_reloads(feature_corpus, tmp_path):
    vocabulary = json.loads((feature_corpus / "manifest.vocab.json").read_text())
    run = Run(feature_corpus / "manifest.jsonl", vocabulary, feature_corpus / "cache", tmp_path / "run")
    config = TrainConfig.for_model("diffsign", streams=["features.rgb"], epochs=2, batch_size=8, lr=1e-3,
                                   model_options={**SMALL, "stage1_fraction": 0.5})
    ctc = TrainConfig.for_model("ctc", streams=["features.rgb"])
    assert (config.optimizer, config.lr_schedule) == (ctc.optimizer, ctc.lr_schedule)  # compared at equal settings
    logged = []
    train(config, run, log=logged.append)
    assert "2 epochs: stage1 1, stage2 1" in logged
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

    old = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # as written before the CTC head on V
    old["model"] = {k: v for k, v in old["model"].items() if not k.startswith("visual.classifier")}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old.pt: its diffsign weights do not fit.*visual.classifier"):
        load_model(tmp_path / "old.pt")


def test_ordinal_keys_place_frames_at_their_gloss_slot():
    """Slots come from stage 1's reading (the CTC head over V): frame j sits at 2 (glosses emitted - 1)."""
    model = make_model(ordinal_keys=True)
    model.eval()
    frames = [1, 1, 0, 2, 2, 2, 0, 0]  # argmax labels of 8 frames: gloss, gloss, blank, gloss x3, blank
    log_probs = torch.full((1, 8, NUM_CLASSES), -30.0)
    log_probs[0, torch.arange(8), torch.tensor(frames)] = 0.0
    model.read_visual = lambda v: log_probs
    model.decoder.forward = lambda v, pad=None, return_hidden=False: (log_probs, 2 * v)  # hidden: 2 V
    v, pad = torch.zeros(1, 8, SMALL["hidden"]), torch.zeros(1, 8, dtype=torch.bool)
    slots = torch.tensor([[0.0, 0, 0, 2, 2, 2, 2, 2]])  # 2 (ordinal - 1): the layout's g1 and g2 slots
    expected = sinusoidal(slots, SMALL["hidden"])
    v = torch.randn(1, 8, SMALL["hidden"])
    normalised = (v - v.mean(-1, keepdim=True)) / v.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
    memory, prior = model.condition(v, pad)
    torch.testing.assert_close(memory, expected + normalised, atol=1e-4, rtol=0)  # the default memory: V
    s, j = 2, 1  # slot 2 against frame 1 (slot 0): -(2 - 0)^2 / 2
    assert float(prior[0, s, j]) == pytest.approx(-2.0) and float(prior[0, s, 3]) == 0.0
    paper = make_model(ordinal_keys=False, alignment_prior=0)
    memory, prior = paper.condition(v, pad)
    torch.testing.assert_close(memory, normalised, atol=1e-5, rtol=0)  # the paper's DiT sees V alone
    assert prior is None
    model.config.ordinal_keys, model.config.memory = False, "decoder"  # the decoder's hidden states over V
    torch.testing.assert_close(model.condition(v + 1, pad)[0], 2 * (v + 1), rtol=0, atol=0)


@pytest.mark.parametrize("dit_input", ["x_t", "zeros"])
def test_the_dit_reads_x_t_where_the_video_cannot_tell(dit_input):
    """Two videos with the same features and other labels: any estimate of G from V alone is the same for
    both, so its error is at least that of their mean. At low noise (t = 100) the DiT must beat that bound
    by reading x_t; a DiT that never sees x_t (``dit_input="zeros"``) cannot, and the test says so."""
    batch = make_batch(n=2, seed=2)
    batch["inputs"]["f"][1] = batch["inputs"]["f"][0]
    batch["lengths"][1] = batch["stream_lengths"]["f"][1] = batch["lengths"][0]
    assert references(batch)[0] != references(batch)[1]
    model = make_model(use_rsm=False, use_gfe=False, train_sampling_steps=1, self_condition=False,
                       ddm_timesteps="uniform", dit_input=dit_input)
    fit(model, batch, "stage1", 60, 3e-3)
    torch.manual_seed(0)
    fit(model, batch, "stage2", 800, 3e-3)
    t = torch.full((2,), 100)
    with torch.no_grad():
        v, pad = model.encode_video(batch)
        memory, prior = model.condition(v, pad)
        g = model.gloss(batch["labels"], batch["label_lengths"], batch["ids"])
        x_t = model.diffusion.q_sample(g, t, torch.randn(g.shape, generator=torch.Generator().manual_seed(0)))
        estimate = model.x0_estimate(model.denoise(x_t, t, memory, pad, None, prior)[0], x_t, t)
    error = float((estimate - g).pow(2).mean())
    blind = float(((g[0] - g[1]) / 2).pow(2).mean())  # the least error of one estimate for both
    assert blind > 0.1
    assert (error < 0.85 * blind) == (dit_input == "x_t"), (error, blind)  # 0.68 measured; blind: >= 1


def test_init_from_a_ctc_run_keeps_its_reading_and_refuses_another_vocabulary(feature_corpus, tmp_path):
    """--init-from runs/ctc/best.pt: stage 1 starts from (and keeps) the baseline's visual encoder and CTC head,
    so DiffSign's stage-1 reading is the baseline's; a checkpoint of another vocabulary is one line, exit 2."""
    from click.testing import CliRunner

    from cslr_pipe.pipeline.cli import main

    manifest, cache = feature_corpus / "manifest.jsonl", feature_corpus / "cache"
    vocabulary = json.loads((feature_corpus / "manifest.vocab.json").read_text())
    sizes = {"hidden": 32, "lstm_layers": 2, "dropout": 0.0}
    ctc = TrainConfig.for_model("ctc", streams=["features.rgb"], epochs=3, batch_size=8, model_options=sizes)
    train(ctc, Run(manifest, vocabulary, cache, tmp_path / "ctc"), log=lambda _: None)
    config = TrainConfig.for_model("diffsign", streams=["features.rgb"], epochs=2, batch_size=8,
                                   init_from=str(tmp_path / "ctc" / "best.pt"), model_options={**SMALL, **sizes})
    logged = []
    train(config, Run(manifest, vocabulary, cache, tmp_path / "diffsign"), log=logged.append)
    assert f"initialised from {tmp_path / 'ctc' / 'best.pt'}" in logged
    baseline, _ = load_model(tmp_path / "ctc" / "best.pt")
    model, _ = load_model(tmp_path / "diffsign" / "best.pt")
    line = evaluate_checkpoint(tmp_path / "ctc" / "best.pt", manifest, cache, "dev", device="cpu").lines[0]
    assert float(line.split("WER ")[1].split("%")[0]) < 50  # the baseline reads something
    assert bool(model.generating) and bool(model.visual_pretrained)
    for name, tensor in baseline.net.state_dict().items():  # untouched by both stages
        torch.testing.assert_close(model.visual.state_dict()[name], tensor, rtol=0, atol=0)

    other = tmp_path / "other.vocab.json"
    other.write_text(json.dumps(vocabulary + ["ZZZ"]))  # a gloss the ctc run never had
    result = CliRunner().invoke(main, ["train", "diffsign", "--manifest", manifest, "--cache", cache, "--streams",
                                       "features.rgb", "--out", tmp_path / "refused", "--vocab", other, "--init-from",
                                       tmp_path / "ctc" / "best.pt", "--epochs", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line, = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "another vocabulary" in line and "ZZZ" in line, line


def brute_force_ctc_log_likelihood(log_probs: torch.Tensor, target: list[int]) -> float:
    """log p(target | [T, C] log-probs) by summing every frame-label path that collapses to it (blank 0)."""
    import itertools

    total = 0.0
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        if collapsed == target:
            total += float(log_probs[torch.arange(len(path)), torch.tensor(path)].sum().exp())
    return float(np.log(total)) if total > 0 else -np.inf


def test_choose_reading_keeps_the_hypothesis_both_heads_find_likelier():
    """Against CTC likelihoods summed over every path by brute force: per video, the greedy hypothesis of
    stage 1 or of G' with the higher log p(h | stage 1) + log p(h | G') is kept, with its own log-probs."""
    from cslr_pipe.training.models.diffsign import choose_reading

    torch.manual_seed(0)
    stage1 = (3 * torch.randn(12, 5, 4)).log_softmax(-1)  # 12 videos, 5 frames, blank + 3 glosses
    generated = (3 * torch.randn(12, 4, 4)).log_softmax(-1)
    lengths1, lengths2 = torch.tensor([5, 4] * 6), torch.full((12,), 4)
    chosen, lengths = choose_reading(stage1, lengths1, generated, lengths2)
    outcomes = set()
    for b in range(12):
        candidates = [greedy_decode(stage1[b, :lengths1[b]]), greedy_decode(generated[b])]
        scores = [brute_force_ctc_log_likelihood(stage1[b, :lengths1[b]], h)
                  + brute_force_ctc_log_likelihood(generated[b], h) for h in candidates]
        keep = 0 if scores[0] > scores[1] else 1
        outcomes.add(keep if candidates[0] != candidates[1] else "same")
        own = (stage1[b, :lengths1[b]], generated[b])[keep]
        assert int(lengths[b]) == len(own)
        torch.testing.assert_close(chosen[b, :len(own)], own)
    assert {0, 1} <= outcomes  # both readings win somewhere


def test_dev_selection_reads_generated_glosses_alone():
    """best.pt is chosen on G' alone: rescoring with stage 1's reading makes an untrained DiT (the first
    epoch of stage 2) look far better than it is, and that epoch would be kept."""
    from cslr_pipe.training.metrics import wer
    from cslr_pipe.training.trainer import evaluate

    model, batch = make_model(hidden=64), make_batch(seed=5)
    fit(model, batch, "stage1", 500, 3e-3)
    model.set_phase("stage2")  # the DiT has not learnt anything yet
    vocabulary = [str(i) for i in range(NUM_CLASSES)]
    rescored = evaluate(model, [batch], vocabulary, "cpu")[0]
    selecting = evaluate(model, [batch], vocabulary, "cpu", selecting=True)[0]
    with torch.no_grad():
        generated = greedy_decode(*model.recognize(batch, rescore=False))
    assert selecting.wer == pytest.approx(wer(references(batch), generated)) and selecting.wer > 0.5
    assert rescored.wer < selecting.wer - 0.2
