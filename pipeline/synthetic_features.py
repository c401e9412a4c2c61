"""A synthetic CSLR corpus at the feature level: what a frozen backbone would give, with known truth.

It stands in for cached per-frame features (e.g. 512-d ResNet features of PHOENIX videos) when a
trainer must be exercised or compared quickly: no videos, no backbone, seconds to generate, and it
keeps what makes continuous recognition hard. The generative process, per corpus (seeded world)
and per sentence (own random stream):

World. Signing happens in a low-dimensional *latent pose space* (``latent_dim``, the hands'
positions and shapes); a fixed random one-layer network, ``features = relu(W z + c)``, maps a pose
to a ``dim``-dimensional feature vector, so features are non-negative and correlated across
dimensions like pooled CNN features. The latent origin is the *rest pose*.

Glosses. Each of the ``num_glosses`` glosses is a short *trajectory*: ``keys_per_gloss`` key poses
visited in order along a smooth path (smoothstep between consecutive keys, so the hand slows down
at each key). Glosses come in ``num_families`` families of similar signs (as minimal pairs in a
sign language): the members of a family start at the same key pose, and each of their later keys
is ``sqrt(family_similarity) * the family's key + sqrt(1 - family_similarity) * its own``. A member
may instead be the *mirror* of the family's first member (the same keys in reverse order, as
GIVE / TAKE), with probability ``mirror_prob``; then only the order tells them apart. Gloss names
are a family letter and a member number ("A1", "A2", "B1" ...), so confusions are easy to read.

Sentences. Lengths are uniform in ``min_glosses..max_glosses``. The first gloss is uniform; each
next one follows a fixed random bigram model (each row Dirichlet(``grammar_concentration``): small
values give a strong "grammar", large ones uniform random glosses), except that with probability
``repeat_prob`` the previous gloss is repeated ("A A B"; never three in a row). Dev and test
sentences only use glosses that train has, and never equal a train sentence or each other.

Signers. The world has ``num_signers`` signers ("S01", "S02" ...), each with a fixed affine map of
the pose space ``z -> (I + distortion G / sqrt(latent_dim)) z + offset`` (G standard normal, the
offset ~ N(0, ``offset``): body proportions, position), a fixed feature offset ~ N(0,
``feature_offset``) (lighting, background) and a fixed signing speed (duration factor) uniform in
``sentence_speed``. Each train, dev and test sentence is signed by one of them, drawn per sentence.

Timing. A sentence is signed at its signer's speed and each gloss occurrence draws another
duration factor in ``gloss_speed``; the occurrence lasts ``round(base_frames * both)`` frames (at
least ``min_gloss_frames``; 0.6x-1.6x of the base with the defaults), split among the segments
between its keys in random proportions. Each occurrence's keys are jittered (``key_jitter``), so
repeated glosses are never identical.

Coarticulation. Between two glosses a *transition* blends the end key of one into the start key of
the next in ``transition_frames`` frames (scaled by the signer's speed); with probability
``detour_prob`` it passes near a key of some other gloss on its way (a movement epenthesis that
looks like a fragment of a sign that is not there). Between a gloss and its repetition the
transition is short (``repeat_transition_frames``): the hand only returns to the start. A sentence
starts and ends with ``rest_frames`` frames near the rest pose and a transition from / to it.

Rendering. The latent poses go through the signer's map and then the sentence's own small
variation of it (a map of the same form, its scales times ``sentence_variation``), the readout, the
signer's feature offset plus the sentence's own (times ``sentence_variation``) and every frame
i.i.d. Gaussian noise (``noise``).

Shifted test split. To score a trainer on data it was not tuned on, ``num_shifted`` further test
sentences ("shifted-00001" ...) differ from the ordinary test split in three ways: they are signed
by ``shifted_signers`` new signers ("N01" ..., drawn like the others, never in train), each next
gloss is with probability ``shifted_offgrammar`` uniform among the allowed glosses (not the
previous one) instead of from the bigram model, and lengths are uniform in ``shifted_lengths``
(longer on average, but within ``min_glosses..max_glosses``). They too use only train glosses and
never equal a train, dev, test or other shifted sentence. They come from their own random
streams: adding them or changing their fields leaves every other row and feature as it was.

Output (:func:`make_feature_corpus`)::

    OUT/manifest.jsonl                 one row per sentence (video = "synthetic/<id>": no file,
                                       signer = the signer's id)
    OUT/manifest.vocab.json            train glosses, blank first (build_vocabulary)
    OUT/manifest-shifted.jsonl         (SHIFTED_MANIFEST) the same train and dev rows; the shifted
                                       sentences instead of the ordinary ones as split "test"
    OUT/manifest-shifted.vocab.json    the same vocabulary
    OUT/cache/features.synthetic/      committed shards: [T, dim] float16 per sentence (the
                                       shifted ones in extra shards), stream STREAM; group attrs
                                       "segments" (JSON [[gloss, start, end), ...] frames of each
                                       gloss occurrence) and "speed"

Train with ``TrainConfig(streams=[STREAM], ...)``, ``Run(OUT/manifest.jsonl, vocabulary,
OUT/cache, ...)``; score on the shifted split with ``shifted_manifest(OUT)`` instead of the
manifest. Everything is a function of the spec: equal specs give identical files.
"""

from __future__ import annotations

import json
import shutil
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cslr_pipe.features.manifest import ManifestRow, build_vocabulary, write_manifest, write_vocabulary
from cslr_pipe.features.store import Cache, Provenance, ShardWriter, write_index

STREAM = "features.synthetic"  # the cache stage and dataset name of the features
GENERATOR = "cslr_pipe.pipeline.synthetic_features"
GENERATOR_VERSION = 2  # bump when the same spec would generate different data
SHARD_SIZE = 256  # sentences per shard
SHIFTED_MANIFEST = "manifest-shifted.jsonl"  # next to manifest.jsonl: the shifted test split


@dataclass(frozen=True)
class FeatureCorpusSpec:
    """What :func:`make_feature_corpus` generates. Plain values, so a spec is easy to log or hash.

    Ranges are ``(low, high)`` pairs: uniform floats, or integers with both ends included.
    """

    num_train: int = 600
    num_dev: int = 100
    num_test: int = 100
    dim: int = 64  # feature size per frame
    latent_dim: int = 12  # size of the pose space the trajectories live in
    num_glosses: int = 24
    num_families: int = 10  # groups of similar glosses (share their start, correlated later keys)
    keys_per_gloss: int = 3
    family_similarity: float = 0.8  # weight of the family's keys in a member's later keys (0..1)
    mirror_prob: float = 0.25  # chance that a later family member is the first one reversed
    min_glosses: int = 2
    max_glosses: int = 7
    grammar_concentration: float = 0.5  # Dirichlet concentration of the bigram rows
    repeat_prob: float = 0.12  # chance that a gloss repeats the previous one ("A A B")
    base_frames: int = 10  # frames of a gloss at speed 1
    min_gloss_frames: int = 4
    sentence_speed: tuple[float, float] = (0.8, 1.25)  # duration factor per signer
    gloss_speed: tuple[float, float] = (0.75, 1.3)  # duration factor per gloss occurrence
    key_jitter: float = 0.3  # std of each occurrence's key offsets (latent units, keys ~ N(0, 1))
    transition_frames: tuple[int, int] = (2, 7)  # between different glosses, at speed 1
    repeat_transition_frames: tuple[int, int] = (1, 3)  # between a gloss and its repetition
    detour_prob: float = 0.4  # chance that a transition passes near another gloss's key
    rest_frames: tuple[int, int] = (3, 8)  # near the rest pose at each end
    num_signers: int = 8  # signers of train, dev and test (one per sentence, drawn)
    distortion: float = 0.3  # scale of a signer's random linear map of the pose space
    offset: float = 0.3  # std of a signer's pose offset
    feature_offset: float = 0.1  # std of a signer's feature offset
    sentence_variation: float = 0.1  # scale of a sentence's own map and offsets, relative to those
    noise: float = 0.5  # std of the per-frame feature noise
    num_shifted: int = 150  # sentences of the shifted test split
    shifted_signers: int = 4  # new signers of the shifted split, none of them in train
    shifted_offgrammar: float = 0.5  # chance that a shifted next gloss ignores the bigram model
    shifted_lengths: tuple[int, int] = (4, 7)  # glosses per shifted sentence
    fps: float = 25.0
    seed: int = 0

    def __post_init__(self):
        if min(self.num_train, self.num_dev, self.num_test, self.num_shifted) < 1:
            raise ValueError("every split needs at least one sentence")
        if self.num_signers < 1 or self.shifted_signers < 1:
            raise ValueError("need num_signers >= 1 and shifted_signers >= 1")
        if not 1 <= self.num_families <= self.num_glosses:
            raise ValueError("need 1 <= num_families <= num_glosses")
        if self.num_families > len(string.ascii_uppercase):
            raise ValueError(f"at most {len(string.ascii_uppercase)} families")
        if not 1 <= self.min_glosses <= self.max_glosses:
            raise ValueError("need 1 <= min_glosses <= max_glosses")
        if self.keys_per_gloss < 2 or self.dim < 1 or self.latent_dim < 1:
            raise ValueError("need keys_per_gloss >= 2, dim >= 1 and latent_dim >= 1")
        if not (0 <= self.family_similarity <= 1 and 0 <= self.mirror_prob <= 1
                and 0 <= self.repeat_prob < 1 and 0 <= self.detour_prob <= 1
                and 0 <= self.shifted_offgrammar <= 1):
            raise ValueError("similarity and probabilities must lie in [0, 1] (repeat_prob < 1)")
        low, high = self.shifted_lengths
        if not self.min_glosses <= low <= high <= self.max_glosses:
            raise ValueError("shifted_lengths must be (low, high) within min_glosses..max_glosses")
        if self.sentence_variation < 0:
            raise ValueError("sentence_variation must be >= 0")
        for name in ("sentence_speed", "gloss_speed", "transition_frames",
                     "repeat_transition_frames", "rest_frames"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.sentence_speed[0] <= 0 or self.gloss_speed[0] <= 0:
            raise ValueError("speed factors must be > 0")
        if self.base_frames < 1 or self.min_gloss_frames < 2:
            raise ValueError("need base_frames >= 1 and min_gloss_frames >= 2")
        if self.grammar_concentration <= 0:
            raise ValueError("grammar_concentration must be > 0")


# ---------------------------------------------------------------- the world (seeded once)

@dataclass(frozen=True)
class Signer:
    """A signer's fixed look and pace: poses ``z -> distort z + offset``, then features
    ``+ feature_offset``; everything it signs lasts ``speed`` times the base."""

    id: str
    distort: np.ndarray  # [latent_dim, latent_dim] I + distortion G / sqrt(latent_dim)
    offset: np.ndarray  # [latent_dim] pose offset
    feature_offset: np.ndarray  # [dim]
    speed: float  # duration factor of everything it signs


@dataclass(frozen=True)
class World:
    """Everything shared by the sentences of a corpus."""

    glosses: tuple[str, ...]
    keys: np.ndarray  # [num_glosses, keys_per_gloss, latent_dim] canonical key poses
    family: np.ndarray  # [num_glosses] family index
    mirror_of: np.ndarray  # [num_glosses] gloss index it mirrors, or -1
    bigram: np.ndarray  # [num_glosses, num_glosses] next-gloss probabilities (diagonal 0)
    readout: np.ndarray  # [dim, latent_dim] W of relu(W z + c)
    bias: np.ndarray  # [dim] c
    signers: tuple[Signer, ...]  # of train, dev and test
    shifted_signers: tuple[Signer, ...]  # of the shifted test split only


def _affine(spec: FeatureCorpusSpec, rng: np.random.Generator,
            scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random pose map [d, d], pose offset [d] and feature offset [dim], ``scale`` times the
    spec's distortion and offsets."""
    d = spec.latent_dim
    distort = np.eye(d) + scale * spec.distortion * rng.normal(size=(d, d)) / np.sqrt(d)
    return (distort, rng.normal(0, scale * spec.offset, d),
            rng.normal(0, scale * spec.feature_offset, spec.dim))


def make_signers(spec: FeatureCorpusSpec, count: int, prefix: str,
                 rng: np.random.Generator) -> tuple[Signer, ...]:
    """``count`` signers "<prefix>01", ... with their maps and speeds drawn from ``rng``."""
    signers = []
    for i in range(count):
        distort, offset, feature_offset = _affine(spec, rng)
        signers.append(Signer(f"{prefix}{i + 1:02d}", distort, offset, feature_offset,
                              float(rng.uniform(*spec.sentence_speed))))
    return tuple(signers)


def make_world(spec: FeatureCorpusSpec) -> World:
    """Glosses, their key poses, the bigram grammar, the feature readout and the signers of
    ``spec.seed`` (the signers from streams of their own)."""
    rng = np.random.default_rng((spec.seed, 0))
    v, k, d = spec.num_glosses, spec.keys_per_gloss, spec.latent_dim
    # every family gets one gloss, the others are dealt at random
    family = np.concatenate([np.arange(spec.num_families),
                             rng.integers(0, spec.num_families, v - spec.num_families)])
    family = np.sort(family)
    anchors = rng.normal(size=(spec.num_families, k, d))
    keys = np.empty((v, k, d))
    mirror_of = np.full(v, -1)
    first: dict[int, int] = {}
    s = spec.family_similarity
    for g in range(v):
        f = int(family[g])
        if f in first and rng.random() < spec.mirror_prob:
            mirror_of[g] = first[f]
            keys[g] = keys[first[f]][::-1]
            continue
        keys[g, 0] = anchors[f, 0]
        keys[g, 1:] = np.sqrt(s) * anchors[f, 1:] + np.sqrt(1 - s) * rng.normal(size=(k - 1, d))
        first.setdefault(f, g)
    members: dict[int, int] = {}
    names = []
    for g in range(v):
        members[int(family[g])] = members.get(int(family[g]), 0) + 1
        names.append(f"{string.ascii_uppercase[int(family[g])]}{members[int(family[g])]}")
    bigram = rng.dirichlet(np.full(v, spec.grammar_concentration), size=v)
    np.fill_diagonal(bigram, 0.0)
    bigram = np.maximum(bigram, 1e-12)  # every transition stays possible
    np.fill_diagonal(bigram, 0.0)
    bigram /= bigram.sum(1, keepdims=True)
    readout = rng.normal(size=(spec.dim, d)) / np.sqrt(d)
    bias = rng.normal(0, 0.5, spec.dim)
    signers = make_signers(spec, spec.num_signers, "S", np.random.default_rng((spec.seed, 3)))
    shifted = make_signers(spec, spec.shifted_signers, "N", np.random.default_rng((spec.seed, 4)))
    return World(tuple(names), keys, family, mirror_of, bigram, readout, bias, signers, shifted)


# ---------------------------------------------------------------- sentences (gloss sequences)

def _sentence(world: World, spec: FeatureCorpusSpec, rng: np.random.Generator,
              allowed: np.ndarray | None = None, lengths: tuple[int, int] | None = None,
              offgrammar: float = 0.0) -> tuple[str, ...]:
    """Glosses drawn from the bigram model with repeats; only ``allowed`` glosses if given, length
    uniform in ``lengths`` (default min_glosses..max_glosses), and each next gloss with
    probability ``offgrammar`` uniform among the allowed others instead of from the bigram."""
    v = len(world.glosses)
    mask = np.ones(v, bool) if allowed is None else allowed
    start = mask / mask.sum()
    low, high = lengths or (spec.min_glosses, spec.max_glosses)
    out: list[int] = []
    for _ in range(rng.integers(low, high + 1)):
        repeated = len(out) >= 2 and out[-1] == out[-2]
        if out and not repeated and rng.random() < spec.repeat_prob:
            out.append(out[-1])
            continue
        p = start if not out else world.bigram[out[-1]] * mask
        if out and offgrammar > 0 and rng.random() < offgrammar:
            p = start * (np.arange(v) != out[-1])
        if p.sum() <= 0:  # nothing allowed follows: start afresh
            p = start * (np.arange(v) != out[-1])
        out.append(int(rng.choice(v, p=p / p.sum())))
    return tuple(world.glosses[g] for g in out)


def _new_sentences(draw, count: int, used: set) -> list[tuple[str, ...]]:
    """``count`` sentences from ``draw()`` not in ``used`` nor repeating each other (given up
    after 200 draws for one sentence, for tiny vocabularies); they are added to ``used``."""
    out = []
    for _ in range(count):
        for _ in range(200):
            sentence = draw()
            if sentence not in used:
                break
        used.add(sentence)
        out.append(sentence)
    return out


def _trained(world: World, plan: list[tuple[str, str, tuple[str, ...]]]) -> np.ndarray:
    """[num_glosses] bool: the glosses that train sentences of ``plan`` use."""
    seen = {g for _, split, sentence in plan if split == "train" for g in sentence}
    return np.array([g in seen for g in world.glosses])


def plan_sentences(spec: FeatureCorpusSpec = FeatureCorpusSpec(),
                   world: World | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """(id, split, glosses) for every sentence: train, then dev, then test.

    Dev and test use only glosses seen in train and never repeat a sentence of an earlier split
    or of themselves (given up after 200 draws for one sentence, for tiny vocabularies).
    """
    world = world or make_world(spec)
    rng = np.random.default_rng((spec.seed, 1))
    train = [_sentence(world, spec, rng) for _ in range(spec.num_train)]
    plan = [(f"train-{i + 1:05d}", "train", s) for i, s in enumerate(train)]
    allowed, used = _trained(world, plan), set(train)
    for split, count in (("dev", spec.num_dev), ("test", spec.num_test)):
        held_out = _new_sentences(lambda: _sentence(world, spec, rng, allowed), count, used)
        plan += [(f"{split}-{i + 1:05d}", split, s) for i, s in enumerate(held_out)]
    return plan


def plan_shifted(spec: FeatureCorpusSpec = FeatureCorpusSpec(), world: World | None = None,
                 plan: list[tuple[str, str, tuple[str, ...]]] | None = None,
                 ) -> list[tuple[str, str, tuple[str, ...]]]:
    """(id, "test", glosses) of the shifted test split (see the module docstring), given the
    ``plan`` of :func:`plan_sentences`: train glosses only, no sentence of ``plan`` or repeated."""
    world = world or make_world(spec)
    plan = plan if plan is not None else plan_sentences(spec, world)
    rng = np.random.default_rng((spec.seed, 5))
    allowed = _trained(world, plan)
    shifted = _new_sentences(
        lambda: _sentence(world, spec, rng, allowed, spec.shifted_lengths, spec.shifted_offgrammar),
        spec.num_shifted, {sentence for _, _, sentence in plan})
    return [(f"shifted-{i + 1:05d}", "test", s) for i, s in enumerate(shifted)]


def split_statistics(spec: FeatureCorpusSpec = FeatureCorpusSpec(), rare: float = 0.02) -> dict[str, dict]:
    """Per split (train, dev, test, shifted): sentences, mean glosses per sentence, and the share of
    transitions between different glosses that the bigram grammar gives a probability below ``rare``."""
    world = make_world(spec)
    plan = plan_sentences(spec, world)
    index = {g: i for i, g in enumerate(world.glosses)}
    splits = {split: [s for _, name, s in plan if name == split] for split in ("train", "dev", "test")}
    splits["shifted"] = [s for _, _, s in plan_shifted(spec, world, plan)]
    statistics = {}
    for split, sentences in splits.items():
        probabilities = [world.bigram[index[a], index[b]] for s in sentences for a, b in zip(s, s[1:]) if a != b]
        statistics[split] = {"sentences": len(sentences), "mean_glosses": float(np.mean([len(s) for s in sentences])),
                             "rare_transitions": float(np.mean(np.array(probabilities) < rare))}
    return statistics


# ---------------------------------------------------------------- frames

def _smoothstep(p: np.ndarray) -> np.ndarray:
    return p * p * (3 - 2 * p)


def _through(points: np.ndarray, bounds: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Poses at phases ``u`` in [0, 1] of a path through ``points`` [n, d] reached at ``bounds``
    (increasing, bounds[0] = 0, bounds[-1] = 1), smoothstep-eased within each segment."""
    seg = np.clip(np.searchsorted(bounds, u, side="right") - 1, 0, len(points) - 2)
    width = np.maximum(bounds[seg + 1] - bounds[seg], 1e-9)
    p = _smoothstep(np.clip((u - bounds[seg]) / width, 0, 1))[:, None]
    return (1 - p) * points[seg] + p * points[seg + 1]


def _transition(a: np.ndarray, b: np.ndarray, frames: int, via: np.ndarray | None) -> np.ndarray:
    """``frames`` poses strictly between a and b (through ``via`` half way, if given)."""
    if frames <= 0:
        return np.empty((0, len(a)))
    u = np.arange(1, frames + 1) / (frames + 1)
    if via is None:
        return _through(np.stack([a, b]), np.array([0.0, 1.0]), u)
    return _through(np.stack([a, via, b]), np.array([0.0, 0.5, 1.0]), u)


def sentence_poses(glosses: tuple[str, ...] | list[str], world: World, spec: FeatureCorpusSpec,
                   rng: np.random.Generator,
                   speed: float) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Canonical latent poses [T, latent_dim] of one sentence signed at duration factor ``speed``
    (before the signer's distortion) and the frames [start, end) of each gloss occurrence."""
    index = {name: i for i, name in enumerate(world.glosses)}
    rest = np.zeros(spec.latent_dim)
    v = len(world.glosses)

    def frames(low_high: tuple[int, int], scale: float = 1.0) -> int:
        return int(round(rng.integers(low_high[0], low_high[1] + 1) * scale))

    parts = [rest + rng.normal(0, 0.05, (frames(spec.rest_frames), spec.latent_dim))]
    segments: list[tuple[str, int, int]] = []
    position, previous, last_key = len(parts[0]), None, rest
    for name in glosses:
        g = index[name]
        keys = world.keys[g] + rng.normal(0, spec.key_jitter, world.keys[g].shape)
        if previous is None:
            gap = _transition(last_key, keys[0], frames(spec.transition_frames, speed), None)
        elif previous == g:
            gap = _transition(last_key, keys[0], frames(spec.repeat_transition_frames), None)
        else:
            via = None
            if rng.random() < spec.detour_prob:
                other = rng.choice([h for h in range(v) if h not in (g, previous)] or [g])
                via = world.keys[other, rng.integers(spec.keys_per_gloss)]
                via = via + rng.normal(0, spec.key_jitter, via.shape)
            gap = _transition(last_key, keys[0], frames(spec.transition_frames, speed), via)
        parts.append(gap)
        position += len(gap)
        length = max(spec.min_gloss_frames,
                     int(round(spec.base_frames * speed * rng.uniform(*spec.gloss_speed))))
        shares = rng.dirichlet(np.full(len(keys) - 1, 4.0))
        bounds = np.concatenate([[0.0], np.cumsum(shares)])
        bounds[-1] = 1.0
        parts.append(_through(keys, bounds, np.linspace(0, 1, length)))
        segments.append((name, position, position + length))
        position += length
        previous, last_key = g, keys[-1]
    parts.append(_transition(last_key, rest, frames(spec.transition_frames, speed), None))
    parts.append(rest + rng.normal(0, 0.05, (frames(spec.rest_frames), spec.latent_dim)))
    return np.concatenate(parts), segments


def render_features(poses: np.ndarray, world: World, spec: FeatureCorpusSpec, signer: Signer,
                    rng: np.random.Generator) -> np.ndarray:
    """Features [T, dim] float32 of one sentence's poses [T, latent_dim]: the signer's map, the
    sentence's own variation of it, readout, feature offsets, noise."""
    distort, offset, feature_offset = _affine(spec, rng, spec.sentence_variation)
    poses = (poses @ signer.distort.T + signer.offset) @ distort.T + offset
    features = np.maximum(poses @ world.readout.T + world.bias, 0.0)
    features += signer.feature_offset + feature_offset
    features += rng.normal(0, spec.noise, features.shape)
    return features.astype(np.float32)


def generate_sentence(glosses: tuple[str, ...] | list[str], world: World, spec: FeatureCorpusSpec,
                      rng: np.random.Generator, signer: Signer,
                      ) -> tuple[np.ndarray, list[tuple[str, int, int]], float]:
    """Features [T, dim] float32, gloss segments [(gloss, start, end)] and speed of one sentence
    signed by ``signer``."""
    poses, segments = sentence_poses(glosses, world, spec, rng, signer.speed)
    return render_features(poses, world, spec, signer, rng), segments, signer.speed


# ---------------------------------------------------------------- corpus

def provenance(spec: FeatureCorpusSpec) -> Provenance:
    return Provenance(stage=STREAM, backend=f"{GENERATOR} v{GENERATOR_VERSION}", config=asdict(spec))


def shifted_manifest(out_dir: str | Path) -> Path:
    """The manifest of ``out_dir`` whose test split is the shifted one."""
    return Path(out_dir) / SHIFTED_MANIFEST


def corpus_matches(out_dir: str | Path, spec: FeatureCorpusSpec = FeatureCorpusSpec()) -> bool:
    """True when ``out_dir`` holds a complete corpus that ``spec`` would generate (reuse it)."""
    out_dir = Path(out_dir)
    manifests = (out_dir / "manifest.jsonl", shifted_manifest(out_dir))
    if not all(m.is_file() and m.with_suffix(".vocab.json").is_file() for m in manifests):
        return False
    try:
        cache = Cache(out_dir / "cache")
        found = cache.provenance(STREAM)
    except (FileNotFoundError, KeyError):
        return False
    total = spec.num_train + spec.num_dev + spec.num_test + spec.num_shifted
    return not provenance(spec).differences(found) and len(cache.ids(STREAM)) == total


def _write_sentences(stage_dir: Path, first_shard: int,
                     plan: list[tuple[str, str, tuple[str, ...]]], signers: tuple[Signer, ...],
                     stream: int, world: World, spec: FeatureCorpusSpec) -> list[ManifestRow]:
    """Shards ``first_shard``, ... with the sentences of ``plan``, each from its own random stream
    ``(seed, stream, number)`` that also picks its signer among ``signers``; their manifest rows."""
    rows = []
    record = provenance(spec)
    for shard, start in enumerate(range(0, len(plan), SHARD_SIZE), first_shard):
        chunk = plan[start:start + SHARD_SIZE]
        with ShardWriter(stage_dir, shard, [video_id for video_id, _, _ in chunk], record) as writer:
            for number, (video_id, split, glosses) in enumerate(chunk, start):
                rng = np.random.default_rng((spec.seed, stream, number))
                signer = signers[rng.integers(len(signers))]
                features, segments, speed = generate_sentence(glosses, world, spec, rng, signer)
                writer.write(video_id, {STREAM: features.astype(np.float16)},
                             group_attrs={"segments": json.dumps(segments), "speed": speed,
                                          "fps": spec.fps})
                rows.append(ManifestRow(id=video_id, split=split, video=f"synthetic/{video_id}",
                                        glosses=glosses, signer=signer.id, fps=spec.fps,
                                        num_frames=len(features), dataset="synthetic-features"))
            writer.commit()
    return rows


def make_feature_corpus(out_dir: str | Path, spec: FeatureCorpusSpec = FeatureCorpusSpec()) -> Path:
    """Generate the corpus under ``out_dir`` (see the module docstring); returns the manifest path
    (the shifted one is :func:`shifted_manifest`).

    The stage folder ``out_dir/cache/features.synthetic`` is replaced as a whole, so no shard of
    an earlier, larger corpus survives.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = make_world(spec)
    plan = plan_sentences(spec, world)
    shifted = plan_shifted(spec, world, plan)
    stage_dir = out_dir / "cache" / STREAM
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    rows = _write_sentences(stage_dir, 0, plan, world.signers, 2, world, spec)
    shifted_rows = _write_sentences(stage_dir, -(-len(plan) // SHARD_SIZE), shifted,
                                    world.shifted_signers, 6, world, spec)
    write_index(stage_dir)
    vocabulary = build_vocabulary(rows)
    manifest = out_dir / "manifest.jsonl"
    for path, manifest_rows in ((manifest, rows),
                                (shifted_manifest(out_dir),
                                 [row for row in rows if row.split != "test"] + shifted_rows)):
        write_vocabulary(vocabulary, path.with_suffix(".vocab.json"))
        write_manifest(manifest_rows, path)
    return manifest
