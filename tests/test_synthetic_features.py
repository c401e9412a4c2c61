"""Tests for pipeline/synthetic_features.py: the feature-level synthetic CSLR corpus.

One small corpus (40 + 8 + 8 sentences) is generated per module; everything takes a few seconds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, replace

import numpy as np
import pytest

from cslr_pipe.features.store import Cache
from cslr_pipe.pipeline.manifest import BLANK, build_vocabulary, read_manifest, read_vocabulary
from cslr_pipe.pipeline.synthetic_features import (STREAM, FeatureCorpusSpec, corpus_matches,
                                                   generate_sentence, make_feature_corpus,
                                                   make_world, plan_sentences)
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded

SPEC = FeatureCorpusSpec(num_train=40, num_dev=8, num_test=8, dim=16, seed=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic-features")
    manifest = make_feature_corpus(root, SPEC)
    return root, manifest, read_manifest(manifest)


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


def test_readable_by_the_training_dataset(corpus):
    root, manifest, rows = corpus
    vocabulary = read_vocabulary(root / "manifest.vocab.json")
    for split, count in (("train", SPEC.num_train), ("dev", SPEC.num_dev), ("test", SPEC.num_test)):
        data = CachedSequenceDataset(root / "cache", manifest, vocabulary, [STREAM], split=split)
        assert len(data) == count
        item = data[0]
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
    lengths = {len(generate_sentence(glosses, world, SPEC, np.random.default_rng(i))[0])
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
        assert cache.ids(STREAM) == sorted(cache.ids(STREAM)) and len(cache.ids(STREAM)) == 56
    assert corpus_matches(root, SPEC)
    assert not corpus_matches(root, replace(SPEC, noise=0.1))
    assert not corpus_matches(tmp_path, SPEC)


def test_regenerating_a_smaller_corpus_leaves_no_stale_sentences(tmp_path):
    big = FeatureCorpusSpec(num_train=300, num_dev=2, num_test=2, dim=4, seed=1)
    make_feature_corpus(tmp_path, big)
    small = replace(big, num_train=5)
    make_feature_corpus(tmp_path, small)
    with Cache(tmp_path / "cache") as cache:
        assert len(cache.ids(STREAM)) == 9
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
