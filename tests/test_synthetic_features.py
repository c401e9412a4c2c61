"""Tests for pipeline/synthetic_features.py: the feature-level synthetic CSLR corpus.

One small corpus (40 + 8 + 8 sentences, 10 shifted) is generated per module; everything takes a
few seconds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, replace

import numpy as np
import pytest

from cslr_pipe.features.store import Cache
from cslr_pipe.features.manifest import BLANK, build_vocabulary, read_manifest, read_vocabulary
from cslr_pipe.pipeline.synthetic_features import (SHIFTED_MANIFEST, STREAM, FeatureCorpusSpec,
                                                   corpus_matches, generate_sentence,
                                                   make_feature_corpus, make_world,
                                                   plan_sentences, plan_shifted, render_features,
                                                   sentence_poses, shifted_manifest, split_statistics)
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded

SPEC = FeatureCorpusSpec(num_train=40, num_dev=8, num_test=8, num_shifted=10, dim=16, seed=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic-features")
    manifest = make_feature_corpus(root, SPEC)
    return root, manifest, read_manifest(manifest)


@pytest.fixture(scope="module")
def shifted_rows(corpus):
    root, _, _ = corpus
    return read_manifest(shifted_manifest(root))


def segments_of(cache: Cache, video_id: str) -> list[tuple[str, int, int]]:
    return [tuple(s) for s in json.loads(cache.attrs(video_id, STREAM)["segments"])]


def test_same_seed_same_corpus_other_seed_another(corpus, tmp_path):
    root, manifest, rows = corpus
    again = make_feature_corpus(tmp_path / "again", SPEC)
    assert again.read_text() == manifest.read_text()
    assert (tmp_path / "again" / "manifest.vocab.json").read_text() == \
        (root / "manifest.vocab.json").read_text()
    with Cache(root / "cache") as first, Cache(tmp_path / "again" / "cache") as second:
        for row in rows[::7]:
            np.testing.assert_array_equal(first.read(row.id)[STREAM], second.read(row.id)[STREAM])
    other = make_feature_corpus(tmp_path / "other", replace(SPEC, seed=6))
    assert other.read_text() != manifest.read_text()


@pytest.mark.parametrize("name", ["manifest.jsonl", SHIFTED_MANIFEST])
def test_readable_by_the_training_dataset(corpus, name):
    root, _, _ = corpus
    manifest = root / name
    rows = read_manifest(manifest)
    vocabulary = read_vocabulary(manifest.with_suffix(".vocab.json"))
    assert vocabulary == read_vocabulary(root / "manifest.vocab.json")  # one vocabulary for both
    num_test = SPEC.num_shifted if name == SHIFTED_MANIFEST else SPEC.num_test
    for split, count in (("train", SPEC.num_train), ("dev", SPEC.num_dev), ("test", num_test)):
        data = CachedSequenceDataset(root / "cache", manifest, vocabulary, [STREAM], split=split)
        assert len(data) == count
        for item in (data[0], data[count - 1]):
            row = next(r for r in rows if r.id == item["id"])
            assert item["inputs"][STREAM].shape == (row.num_frames, SPEC.dim)
            assert item["inputs"][STREAM].dtype.is_floating_point
            assert [vocabulary[i] for i in item["labels"]] == list(row.glosses)
        batch = collate_padded([data[i] for i in range(4)])
        assert batch["inputs"][STREAM].shape[-1] == SPEC.dim
        data.close()


def test_vocabulary_has_the_blank_first_and_the_train_glosses(corpus):
    root, _, rows = corpus
    vocabulary = read_vocabulary(root / "manifest.vocab.json")
    assert vocabulary[0] == BLANK
    assert vocabulary == build_vocabulary(rows)
    assert set(vocabulary[1:]) <= set(make_world(SPEC).glosses)


def test_splits_are_disjoint_and_held_out_glosses_are_trained(corpus):
    _, _, rows = corpus
    by_split = defaultdict(list)
    for row in rows:
        by_split[row.split].append(row)
    ids = [row.id for row in rows]
    assert len(ids) == len(set(ids))
    train_sentences = {row.glosses for row in by_split["train"]}
    train_glosses = {g for s in train_sentences for g in s}
    held_out = by_split["dev"] + by_split["test"]
    assert all(row.glosses not in train_sentences for row in held_out)
    assert len({row.glosses for row in held_out}) == len(held_out)
    assert all(set(row.glosses) <= train_glosses for row in held_out)
    assert all(SPEC.min_glosses <= len(row.glosses) <= SPEC.max_glosses for row in rows)


def test_signing_speed_varies(corpus):
    root, _, rows = corpus
    world = make_world(SPEC)
    glosses = ("A1", "B1", "C1")
    lengths = {len(generate_sentence(glosses, world, SPEC, np.random.default_rng(i),
                                     world.signers[i % SPEC.num_signers])[0])
               for i in range(12)}
    assert max(lengths) >= 1.3 * min(lengths)  # same glosses, different speeds
    durations = defaultdict(list)
    with Cache(root / "cache") as cache:
        for row in rows:
            segments = segments_of(cache, row.id)
            assert [name for name, _, _ in segments] == list(row.glosses)
            assert segments[-1][2] < row.num_frames  # a transition and rest frames follow
            for name, start, end in segments:
                durations[name].append(end - start)
    spread = [max(d) / min(d) for d in durations.values() if len(d) >= 5]
    assert spread and min(spread) > 1 and np.median(spread) >= 1.5  # one gloss, many durations
    assert max(spread) <= 2.7 + 1e-9  # 0.6x .. 1.6x of the base (rounded)


def test_repeated_glosses_occur_with_short_transitions(corpus):
    root, _, rows = corpus
    repeats = 0
    with Cache(root / "cache") as cache:
        for row in rows:
            segments = segments_of(cache, row.id)
            assert all(a[2] <= b[1] for a, b in zip(segments, segments[1:]))  # in order, apart
            for a, b in zip(segments, segments[1:]):
                if a[0] == b[0]:
                    repeats += 1
                    assert b[1] - a[2] <= SPEC.repeat_transition_frames[1]
    assert repeats >= 3
    assert not any(a == b == c for row in rows
                   for a, b, c in zip(row.glosses, row.glosses[1:], row.glosses[2:]))


def test_glosses_are_trajectories_and_families_are_similar():
    world = make_world(FeatureCorpusSpec())
    keys = world.keys
    steps = np.linalg.norm(np.diff(keys, axis=1), axis=-1)
    assert steps.min() > 0.5  # every gloss moves between its keys
    for g in range(len(keys)):
        for h in range(g + 1, len(keys)):
            same_family = world.family[g] == world.family[h]
            if same_family and world.mirror_of[g] < 0 and world.mirror_of[h] < 0:
                np.testing.assert_allclose(keys[g, 0], keys[h, 0])  # shared start
            if world.mirror_of[h] == g:
                np.testing.assert_allclose(keys[h], keys[g][::-1])
    assert len(set(world.family.tolist())) == FeatureCorpusSpec().num_families


def test_provenance_names_the_generator_and_the_spec(corpus, tmp_path):
    root, _, _ = corpus
    with Cache(root / "cache") as cache:
        provenance = cache.provenance(STREAM)
        assert "synthetic_features" in provenance.backend
        assert provenance.config == json.loads(json.dumps(asdict(SPEC)))
        assert cache.ids(STREAM) == sorted(cache.ids(STREAM)) and len(cache.ids(STREAM)) == 66
    assert corpus_matches(root, SPEC)
    assert not corpus_matches(root, replace(SPEC, noise=0.1))
    assert not corpus_matches(root, replace(SPEC, num_shifted=11))
    assert not corpus_matches(tmp_path, SPEC)
    make_feature_corpus(tmp_path, SPEC)
    assert corpus_matches(tmp_path, SPEC)
    shifted_manifest(tmp_path).unlink()
    assert not corpus_matches(tmp_path, SPEC)


def test_regenerating_a_smaller_corpus_leaves_no_stale_sentences(tmp_path):
    big = FeatureCorpusSpec(num_train=300, num_dev=2, num_test=2, num_shifted=260, dim=4, seed=1)
    make_feature_corpus(tmp_path, big)
    small = replace(big, num_train=5, num_shifted=3)
    make_feature_corpus(tmp_path, small)
    with Cache(tmp_path / "cache") as cache:
        assert len(cache.ids(STREAM)) == 12
    assert corpus_matches(tmp_path, small)


def test_plan_and_spec_checks():
    plan = plan_sentences(SPEC)
    assert [split for _, split, _ in plan] == ["train"] * 40 + ["dev"] * 8 + ["test"] * 8
    with pytest.raises(ValueError):
        FeatureCorpusSpec(num_dev=0)
    with pytest.raises(ValueError):
        FeatureCorpusSpec(min_glosses=3, max_glosses=2)
    with pytest.raises(ValueError):
        FeatureCorpusSpec(gloss_speed=(1.2, 0.8))
    with pytest.raises(ValueError):
        FeatureCorpusSpec(max_glosses=6)  # shifted sentences (4..7) would outgrow train's
    with pytest.raises(ValueError):
        FeatureCorpusSpec(num_signers=0)
    with pytest.raises(ValueError):
        FeatureCorpusSpec(shifted_offgrammar=1.5)
    shifted = plan_shifted(SPEC)
    assert [video_id for video_id, _, _ in shifted] == [f"shifted-{i:05d}" for i in range(1, 11)]
    assert {split for _, split, _ in shifted} == {"test"}


# ---------------------------------------------------------------- signers

def test_a_signer_keeps_its_look_and_each_sentence_varies_it_a_little():
    spec = replace(SPEC, noise=0.0)
    world = make_world(spec)
    poses, _ = sentence_poses(("A1", "B1"), world, spec, np.random.default_rng(0), 1.0)

    def features(signer, seed, variation=spec.sentence_variation):
        return render_features(poses, world, replace(spec, sentence_variation=variation), signer,
                               np.random.default_rng(seed))

    first, second = world.signers[:2]
    np.testing.assert_array_equal(features(first, 1, 0.0), features(first, 2, 0.0))
    own = np.abs(features(first, 1) - features(first, 2)).mean()
    other = np.abs(features(first, 1) - features(second, 2)).mean()
    assert 0 < own < 0.5 * other  # a sentence's own variation is small beside a signer change


def test_manifest_names_the_signers_and_each_signs_at_its_own_speed(corpus, shifted_rows):
    root, _, rows = corpus
    signers = {split: {row.signer for row in rows if row.split == split}
               for split in ("train", "dev", "test")}
    assert signers["train"] <= {f"S{i:02d}" for i in range(1, SPEC.num_signers + 1)}
    assert len(signers["train"]) >= SPEC.num_signers - 1  # drawn per sentence, not one for all
    assert signers["dev"] | signers["test"] <= signers["train"]
    shifted = {row.signer for row in shifted_rows if row.id.startswith("shifted-")}
    assert shifted <= {f"N{i:02d}" for i in range(1, SPEC.shifted_signers + 1)}
    assert len(shifted) >= 2 and not shifted & signers["train"]
    speeds = defaultdict(set)
    with Cache(root / "cache") as cache:
        for row in rows + shifted_rows:
            speeds[row.signer].add(cache.attrs(row.id, STREAM)["speed"])
    assert all(len(s) == 1 for s in speeds.values())
    assert len({s.pop() for s in speeds.values()}) == len(speeds)


# ---------------------------------------------------------------- the shifted test split

def test_shifted_manifest_swaps_only_the_test_rows(corpus, shifted_rows):
    root, _, rows = corpus
    kept = [row for row in rows if row.split != "test"]
    assert shifted_rows[:len(kept)] == kept
    shifted = shifted_rows[len(kept):]
    assert [row.id for row in shifted] == [f"shifted-{i + 1:05d}" for i in range(SPEC.num_shifted)]
    assert {row.split for row in shifted} == {"test"}
    assert (root / "manifest-shifted.vocab.json").read_text() == \
        (root / "manifest.vocab.json").read_text()
    with Cache(root / "cache") as cache:
        assert {row.id for row in shifted} <= set(cache.ids(STREAM))


def test_shifted_sentences_are_new_and_use_train_glosses(shifted_rows, corpus):
    _, _, rows = corpus
    shifted = [row.glosses for row in shifted_rows if row.id.startswith("shifted-")]
    assert len(set(shifted)) == len(shifted)
    assert not set(shifted) & {row.glosses for row in rows}
    train_glosses = {g for row in rows if row.split == "train" for g in row.glosses}
    assert all(set(s) <= train_glosses for s in shifted)
    low, high = SPEC.shifted_lengths
    assert all(low <= len(s) <= high for s in shifted)


def test_the_shifted_split_leaves_the_other_rows_and_features_as_they_were(corpus, tmp_path):
    root, manifest, rows = corpus
    other = replace(SPEC, num_shifted=150, shifted_signers=2, shifted_offgrammar=0.9,
                    shifted_lengths=(6, 7))
    again = make_feature_corpus(tmp_path, other)
    assert again.read_bytes() == manifest.read_bytes()
    assert (tmp_path / "manifest.vocab.json").read_bytes() == \
        (root / "manifest.vocab.json").read_bytes()
    kept = [row for row in read_manifest(shifted_manifest(tmp_path)) if row.split != "test"]
    assert kept == [row for row in rows if row.split != "test"]
    with Cache(root / "cache") as first, Cache(tmp_path / "cache") as second:
        for row in rows:
            np.testing.assert_array_equal(first.read(row.id)[STREAM], second.read(row.id)[STREAM])


@pytest.mark.parametrize("seed", [0, 1])
def test_shifted_sentences_are_off_grammar_and_longer(seed):
    statistics = split_statistics(FeatureCorpusSpec(seed=seed))
    test, shifted = statistics["test"], statistics["shifted"]
    assert (test["sentences"], shifted["sentences"]) == (100, 150)
    assert abs(test["rare_transitions"] - statistics["train"]["rare_transitions"]) < 0.05  # test follows train
    assert shifted["rare_transitions"] > max(2 * test["rare_transitions"], test["rare_transitions"] + 0.1)
    assert shifted["mean_glosses"] > test["mean_glosses"] + 0.5
