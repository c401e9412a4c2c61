"""A small synthetic signing corpus: rendered videos of a cartoon signer whose hands encode glosses.

Gloss encoding. At every frame the signer's pose is an 8-vector ``[rx, ry, lx, ly, r_angle,
r_open, l_angle, l_open]``: right and left wrist positions, then each hand's direction (degrees
in image coordinates, 0 = towards the image's right, 90 = down) and openness (0 = fist, 1 = open
hand with spread fingers). Positions are in *signer units*: a square whose side is the frame's
shorter side, the head near (0.5, 0.2), the shoulders at y = 0.42. Each gloss is a function from
a phase p in [0, 1] to a pose: a characteristic hand path and handshape (see ``_MOTIONS``), e.g.
HELLO waves the right hand beside the head, MORE taps both fists together, CHANGE swaps the hands.

A sentence is a rest pose, then each gloss reached from the previous pose by a smooth transition
(coarticulation), then a transition back to rest. Every video draws its own signing speed
(+-30 %), signer offset and scale, colours and background texture; a gloss occurrence also gets a
small random shift, so repeated glosses ("A A B") are never pixel-identical. Between two
occurrences of the same gloss the hands drop half-way back to rest and hold for a moment, as
signers mark a repetition; without that, a repeated gloss whose motion ends where it starts (a
wave, a tap, a circle) would look like one longer occurrence, which no recogniser could split. Elbows come from
two-link inverse kinematics. Everything drawn is recorded as COCO-WholeBody keypoints (133 points,
pixels; undrawn points score 0 at x = y = 0).

"Right" and "left" are the signer's: the right hand appears on the image's left.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.manifest import SPLITS, ManifestRow, build_vocabulary, write_manifest, write_vocabulary

GLOSSES: tuple[str, ...] = ("HELLO", "THANKS", "NO", "PLEASE", "GOOD", "MORE", "RAIN", "CHANGE")

RIGHT_HAND_RGB = (235, 105, 45)  # orange glove
LEFT_HAND_RGB = (200, 120, 90)  # warm, skin-like glove: pose estimators find it (they miss green)
SKIN_RGB = (236, 198, 166)
HAIR_RGB = (70, 50, 40)

# COCO-WholeBody indices
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST, L_HIP, R_HIP = 5, 6, 7, 8, 9, 10, 11, 12
FACE, LEFT_HAND, RIGHT_HAND = 23, 91, 112  # first index of the 68 face and 21+21 hand points
NUM_KEYPOINTS = 133


@dataclass(frozen=True)
class CorpusSpec:
    """What :func:`make_corpus` generates. All values plain, so a spec is easy to log or hash."""

    num_videos: int = 48
    height: int = 128
    width: int = 128
    fps: float = 25.0
    min_glosses: int = 2
    max_glosses: int = 4
    seed: int = 0
    speed_jitter: float = 0.3  # per-video signing speed within 1 +- this
    repeat_prob: float = 0.15  # chance that a gloss repeats the previous one ("A A B")
    dev_fraction: float = 0.15
    test_fraction: float = 0.15
    folder_every: int = 3  # every n-th video is a folder of PNG frames, the others mp4 files
    signer: str = "synthetic-0"

    def __post_init__(self):
        if self.num_videos < len(SPLITS):
            raise InputError(f"num_videos must be >= {len(SPLITS)} (one video per split)")
        if min(self.height, self.width) < 32:
            raise InputError("height and width must be >= 32 pixels")
        if not 1 <= self.min_glosses <= self.max_glosses:
            raise InputError("need 1 <= min_glosses <= max_glosses")
        if self.fps <= 0 or not 0 <= self.speed_jitter < 1 or self.folder_every < 1:
            raise InputError("need fps > 0, 0 <= speed_jitter < 1 and folder_every >= 1")


# ---------------------------------------------------------------- signer and glosses (signer units)

SHOULDERS = {"right": np.array([0.36, 0.42]), "left": np.array([0.64, 0.42])}
UPPER_ARM, FOREARM = 0.25, 0.23
HEAD_CENTER, HEAD_AXES = np.array([0.5, 0.2]), np.array([0.075, 0.095])
REST_R, REST_L = (0.38, 0.86), (0.62, 0.86)
REST_RH, REST_LH = (95.0, 0.5), (85.0, 0.5)  # relaxed hands hanging down


def _pose(r, l, r_hand=REST_RH, l_hand=REST_LH) -> np.ndarray:
    return np.array([*r, *l, *r_hand, *l_hand], np.float64)


REST = _pose(REST_R, REST_L)


REPEAT_RETRACT = 0.5  # between two occurrences of a gloss the hands go this far back to rest


def _ease(p: float) -> float:
    return p * p * (3 - 2 * p)


def _hello(p):  # right hand up beside the head, waving twice
    w = np.sin(4 * np.pi * p)
    return _pose((0.28 + 0.05 * w, 0.24), REST_L, (-90 + 20 * w, 1.0))


def _thanks(p):  # flat right hand from the chin forwards and down
    e = _ease(p)
    return _pose((0.47 - 0.08 * e, 0.40 + 0.22 * e), REST_L, (-80 + 60 * e, 1.0))


def _no(p):  # half-closed right hand zigzags down across the chest
    tri = 1 - abs((3 * p) % 2 - 1)  # 0 -> 1 -> 0 -> 1: three strokes
    return _pose((0.40 + 0.18 * tri, 0.54 + 0.16 * p), REST_L, (-45.0, 0.3))


def _please(p):  # flat right hand circles on the chest
    a = 2 * np.pi * p
    return _pose((0.44 + 0.06 * np.sin(a), 0.60 - 0.06 * np.cos(a)), REST_L, (0.0, 1.0))


def _good(p):  # flat left hand taps the chest twice
    tap = abs(np.sin(2 * np.pi * p))
    return _pose(REST_R, (0.65 - 0.08 * tap, 0.56), REST_RH, (180.0, 1.0))


def _more(p):  # both fists tap together twice in front of the body
    tap = abs(np.sin(2 * np.pi * p))
    return _pose((0.40 + 0.07 * tap, 0.62), (0.60 - 0.07 * tap, 0.62), (0.0, 0.0), (180.0, 0.0))


def _rain(p):  # both open hands, fingers down, fall twice with wiggling fingers
    y = 0.54 + 0.16 * (1 - np.cos(4 * np.pi * p)) / 2
    wiggle = 0.75 + 0.25 * np.sin(8 * np.pi * p)
    return _pose((0.41, y), (0.59, y), (95.0, wiggle), (85.0, wiggle))


def _change(p):  # the hands swap sides, the right one passing above the left
    e = _ease(p)
    arc = 0.06 * np.sin(np.pi * e)
    return _pose((0.40 + 0.20 * e, 0.58 - 0.04 * e - arc), (0.60 - 0.20 * e, 0.58 + 0.04 * e + arc),
                 (-60.0, 0.5), (-120.0, 0.5))


# gloss -> (motion, frames at normal speed)
_MOTIONS: dict[str, tuple[Callable[[float], np.ndarray], int]] = {
    "HELLO": (_hello, 12), "THANKS": (_thanks, 10), "NO": (_no, 12), "PLEASE": (_please, 12),
    "GOOD": (_good, 10), "MORE": (_more, 10), "RAIN": (_rain, 12), "CHANGE": (_change, 10),
}
assert tuple(_MOTIONS) == GLOSSES


def _transition(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """``n`` poses strictly between ``a`` and ``b``, eased in and out.

    Wrists move in polar coordinates around their shoulders, so a hand swings around its
    shoulder (as an arm does) instead of passing through it.
    """
    t = np.arange(1, n + 1) / (n + 1)
    e = (t * t * (3 - 2 * t))[:, None]
    poses = a + e * (b - a)
    for i, shoulder in ((0, SHOULDERS["right"]), (2, SHOULDERS["left"])):
        (ra, aa), (rb, ab) = _polar(a[i:i + 2] - shoulder), _polar(b[i:i + 2] - shoulder)
        turn = (ab - aa + np.pi) % (2 * np.pi) - np.pi  # the shorter way round
        radius, angle = ra + e[:, 0] * (rb - ra), aa + e[:, 0] * turn
        poses[:, i:i + 2] = shoulder + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    return poses


def _polar(v: np.ndarray) -> tuple[float, float]:
    return float(np.hypot(*v)), float(np.arctan2(v[1], v[0]))


def _timeline(glosses: list[str], rng: np.random.Generator, duration: float) -> np.ndarray:
    """Poses [T, 8] of a sentence: rest, glosses with transitions, rest."""
    parts = [np.repeat(REST[None], rng.integers(3, 7), axis=0)]
    previous, last_gloss = REST, None
    for gloss in glosses:
        motion, frames = _MOTIONS[gloss]
        n = max(5, round(frames * duration * rng.uniform(0.9, 1.1)))
        segment = np.stack([motion(p) for p in np.linspace(0.0, 1.0, n)])
        segment[:, :4] += rng.uniform(-0.015, 0.015, 4)  # this occurrence's wrist shift
        if gloss == last_gloss:  # a repetition: the hands drop back half-way and hold, then restart
            retracted = previous + REPEAT_RETRACT * (REST - previous)
            parts += [_transition(previous, retracted, max(2, round(3 * duration))),
                      np.repeat(retracted[None], max(2, round(3 * duration)), axis=0)]
            previous = retracted
        parts += [_transition(previous, segment[0], max(2, round(rng.integers(3, 6) * duration))),
                  segment]
        previous, last_gloss = segment[-1], gloss
    parts += [_transition(previous, REST, max(3, round(4 * duration))),
              np.repeat(REST[None], rng.integers(3, 7), axis=0)]
    return np.concatenate(parts)


# ---------------------------------------------------------------- skeleton (signer units)


def _ellipse(center, ax, ay, degrees) -> np.ndarray:
    a = np.radians(np.asarray(degrees, np.float64))
    return np.stack([center[0] + ax * np.cos(a), center[1] + ay * np.sin(a)], axis=-1)


def _face() -> np.ndarray:
    """The 68 iBUG face points (image-left first), drawn as the face's features."""
    c, (ax, ay) = HEAD_CENTER, HEAD_AXES
    jaw = _ellipse(c, ax, ay, np.linspace(180, 0, 17))
    brows = [np.stack([np.linspace(x - 0.016, x + 0.016, 5),
                       c[1] - 0.032 - 0.005 * np.sin(np.linspace(0, np.pi, 5))], axis=-1)
             for x in (c[0] - 0.033, c[0] + 0.033)]
    bridge = np.stack([np.full(4, c[0]), np.linspace(c[1] - 0.018, c[1] + 0.028, 4)], axis=-1)
    nostrils = np.stack([np.linspace(c[0] - 0.012, c[0] + 0.012, 5),
                         c[1] + 0.034 + 0.003 * np.sin(np.linspace(0, np.pi, 5))], axis=-1)
    lids = [180, 240, 300, 0, 60, 120]
    eyes = [_ellipse((x, c[1] - 0.008), 0.012, 0.006, lids) for x in (c[0] - 0.033, c[0] + 0.033)]
    mouth = (c[0], c[1] + 0.058)
    outer = _ellipse(mouth, 0.024, 0.009, [180, 210, 240, 270, 300, 330, 0, 30, 60, 90, 120, 150])
    inner = _ellipse(mouth, 0.018, 0.003, [180, 225, 270, 315, 0, 45, 90, 135])
    return np.concatenate([jaw, *brows, bridge, nostrils, *eyes, outer, inner])


def _static_points() -> np.ndarray:
    """Keypoints that do not move [133, 2], NaN where nothing is drawn or the point moves."""
    points = np.full((NUM_KEYPOINTS, 2), np.nan)
    face = _face()
    points[FACE:FACE + 68] = face
    points[NOSE] = face[30]
    points[R_EYE], points[L_EYE] = face[36:42].mean(0), face[42:48].mean(0)
    points[R_EAR], points[L_EAR] = HEAD_CENTER + [-HEAD_AXES[0], 0], HEAD_CENTER + [HEAD_AXES[0], 0]
    points[R_SHOULDER], points[L_SHOULDER] = SHOULDERS["right"], SHOULDERS["left"]
    points[R_HIP], points[L_HIP] = (0.40, 0.95), (0.60, 0.95)
    return points


def _rotate(v: np.ndarray, a: float) -> np.ndarray:
    return np.array([v[0] * np.cos(a) - v[1] * np.sin(a), v[0] * np.sin(a) + v[1] * np.cos(a)])


def _elbow(shoulder: np.ndarray, wrist: np.ndarray, outward: float) -> np.ndarray:
    """Two-link inverse kinematics: of the two solutions, the elbow that hangs lower and outward.

    ``outward`` is -1 for the right arm (outward = towards the image's left), +1 for the left.
    """
    d = wrist - shoulder
    dist = max(float(np.hypot(*d)), 1e-6)
    reach = np.clip(dist, abs(UPPER_ARM - FOREARM) + 1e-3, UPPER_ARM + FOREARM - 1e-3)
    a = np.arccos(np.clip((UPPER_ARM**2 + reach**2 - FOREARM**2) / (2 * UPPER_ARM * reach), -1, 1))
    elbows = [shoulder + UPPER_ARM * _rotate(d / dist, bend * a) for bend in (1.0, -1.0)]
    return max(elbows, key=lambda e: e[1] + 0.5 * outward * (e[0] - shoulder[0]))


FINGERS = np.array([0.048, 0.054, 0.050, 0.040])  # index, middle, ring, little
FINGER_SEGMENTS = np.array([0.45, 0.75, 1.0])  # cumulative fractions of a finger: PIP, DIP, tip


def _hand(wrist: np.ndarray, degrees: float, openness: float, side: float):
    """The 21 hand points (wrist, then thumb..little 4 each) and the palm polygon.

    ``side`` +1 for the right hand, -1 for the left: the thumb is on the hand's ``side * v`` side.
    """
    u = np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])
    v = np.array([-u[1], u[0]])
    palm, width = 0.05, 0.045
    points = [wrist]
    cmc = wrist + 0.25 * palm * u + side * 0.5 * width * v
    thumb_dir = _rotate(u, side * (0.55 + 0.5 * openness))
    thumb_len = 0.05 * (0.5 + 0.5 * openness)
    points += [cmc + f * thumb_len * thumb_dir for f in (0.0, 0.45, 0.75, 1.0)]
    mcps = [wrist + palm * u + side * width * o * v for o in (0.45, 0.15, -0.15, -0.45)]
    for mcp, length, spread in zip(mcps, FINGERS, (0.22, 0.06, -0.1, -0.26)):
        direction = _rotate(u, side * spread * openness)
        length *= 0.3 + 0.7 * openness
        points += [mcp, *(mcp + f * length * direction for f in FINGER_SEGMENTS)]
    polygon = [wrist + side * 0.45 * width * v, *mcps, wrist - side * 0.45 * width * v]
    return np.array(points), np.array(polygon)


def _skeleton(pose: np.ndarray, static: np.ndarray):
    """All keypoints [133, 2] (NaN = not drawn) and the two palm polygons of one pose."""
    points = static.copy()
    right, left = pose[0:2], pose[2:4]
    points[R_ELBOW] = _elbow(SHOULDERS["right"], right, -1.0)
    points[L_ELBOW] = _elbow(SHOULDERS["left"], left, +1.0)
    right_points, right_palm = _hand(right, pose[4], pose[5], +1.0)
    left_points, left_palm = _hand(left, pose[6], pose[7], -1.0)
    points[RIGHT_HAND:RIGHT_HAND + 21], points[LEFT_HAND:LEFT_HAND + 21] = right_points, left_points
    points[R_WRIST], points[L_WRIST] = right, left
    return points, right_palm, left_palm


# ---------------------------------------------------------------- drawing (pixels)

SHIFT = 4  # sub-pixel bits of the cv2 drawing calls


def _fx(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << SHIFT)).astype(np.int32)


def _pt(point: np.ndarray) -> tuple[int, int]:
    x, y = _fx(point)
    return int(x), int(y)


def _rgb(colour) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(colour, 0, 255))


@dataclass(frozen=True)
class _Look:
    """How one video's signer is placed and coloured."""

    origin: np.ndarray  # pixel position of signer-unit (0, 0)
    unit: float  # pixels per signer unit
    shirt: tuple[int, int, int]
    sleeve: tuple[int, int, int]
    background: np.ndarray  # [H, W, 3] uint8 textured background

    def px(self, points: np.ndarray) -> np.ndarray:
        return self.origin + self.unit * np.asarray(points)

    def width(self, fraction: float, least: int = 1) -> int:
        return max(least, int(round(fraction * self.unit)))


def _random_look(spec: CorpusSpec, rng: np.random.Generator) -> _Look:
    side = min(spec.height, spec.width)
    unit = side * rng.uniform(0.92, 1.08)
    origin = (np.array([spec.width - unit, spec.height - unit]) / 2
              + rng.uniform(-0.04, 0.04, 2) * side)
    shirt = np.array([55, 65, 100]) + rng.uniform(-15, 15, 3)
    tone = np.array([200, 198, 190]) + rng.uniform(-12, 12, 3)
    coarse = rng.normal(0, 1, (spec.height // 8 + 2, spec.width // 8 + 2, 1)).astype(np.float32)
    texture = cv2.resize(coarse, (spec.width, spec.height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 1, (spec.height, spec.width, 1))
    background = np.clip(tone + 9 * texture[..., None] + 3 * fine, 0, 255).astype(np.uint8)
    return _Look(origin, unit, _rgb(shirt), _rgb(shirt * 0.8), background)


def _draw_body(look: _Look, static_px: np.ndarray) -> np.ndarray:
    """Background, torso, neck and head with face: everything that does not move."""
    img = look.background.copy()
    aa = cv2.LINE_AA
    torso = look.px([(0.33, 0.50), (0.37, 0.40), (0.45, 0.37), (0.55, 0.37), (0.63, 0.40),
                     (0.67, 0.50), (0.65, 1.2), (0.35, 1.2)])
    cv2.fillPoly(img, [_fx(torso)], look.shirt, aa, SHIFT)
    neck = look.px([(0.47, 0.26), (0.53, 0.26), (0.535, 0.38), (0.465, 0.38)])
    cv2.fillPoly(img, [_fx(neck)], _rgb(np.array(SKIN_RGB) * 0.9), aa, SHIFT)
    skin = _rgb(SKIN_RGB)
    ear_axes = _pt(np.array([0.012, 0.02]) * look.unit)
    for ear in (R_EAR, L_EAR):
        cv2.ellipse(img, _pt(static_px[ear]), ear_axes, 0, 0, 360, skin, -1, aa, SHIFT)
    center, axes = _pt(look.px(HEAD_CENTER)), _pt(HEAD_AXES * look.unit)
    cv2.ellipse(img, center, axes, 0, 0, 360, skin, -1, aa, SHIFT)
    hair_center = _pt(look.px(HEAD_CENTER - [0, 0.04]))
    hair_axes = _pt(np.array([HEAD_AXES[0] + 0.006, 0.066]) * look.unit)
    cv2.ellipse(img, hair_center, hair_axes, 0, 180, 360, _rgb(HAIR_RGB), -1, aa, SHIFT)
    face = static_px[FACE:FACE + 68]
    dark, nose, line = (45, 35, 35), _rgb(np.array(SKIN_RGB) * 0.75), look.width(0.008)
    for part, colour in ((face[17:22], dark), (face[22:27], dark), (face[27:31], nose),
                         (face[31:36], nose)):
        cv2.polylines(img, [_fx(part)], False, colour, line, aa, SHIFT)
    for eye in (face[36:42], face[42:48]):
        cv2.fillPoly(img, [_fx(eye)], dark, aa, SHIFT)
    cv2.fillPoly(img, [_fx(face[48:60])], (190, 70, 80), aa, SHIFT)
    cv2.polylines(img, [_fx(face[60:68])], True, (120, 40, 50), 1, aa, SHIFT)
    return img


def _draw_arm_and_hand(img, look: _Look, shoulder, elbow, hand, palm, colour) -> None:
    aa = cv2.LINE_AA
    arm = _fx([shoulder, elbow, hand[0]])
    cv2.polylines(img, [arm], False, look.sleeve, look.width(0.05, 2), aa, SHIFT)
    cv2.fillPoly(img, [_fx(palm)], colour, aa, SHIFT)
    finger = look.width(0.014)
    for start in range(1, 21, 4):  # thumb, index, middle, ring, little
        cv2.polylines(img, [_fx(hand[start:start + 4])], False, colour, finger, aa, SHIFT)
    radius = max(2.0, 0.022 * look.unit)
    cv2.circle(img, _pt(hand[0]), int(round(radius * (1 << SHIFT))), colour, -1, aa, SHIFT)


def render_video(glosses: list[str], spec: CorpusSpec = CorpusSpec(),
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one sentence: frames [T, H, W, 3] uint8 RGB and keypoints [T, 133, 3] float32.

    Keypoints are COCO-WholeBody (x, y, score) in pixels; score 1 for points drawn inside the
    frame (even when the other hand hides them), 0 with x = y = 0 otherwise. Deterministic given
    ``rng``'s state; ``rng`` defaults to one seeded with ``spec.seed``.
    """
    unknown = [g for g in glosses if g not in _MOTIONS]
    if unknown or not glosses:
        raise InputError(f"glosses must be a non-empty list from {GLOSSES}, got unknown {unknown}")
    rng = np.random.default_rng(spec.seed) if rng is None else rng
    look = _random_look(spec, rng)
    static = _static_points()
    body = _draw_body(look, look.px(static))
    duration = rng.uniform(1 - spec.speed_jitter, 1 + spec.speed_jitter)
    poses = _timeline(list(glosses), rng, duration)
    frames = np.empty((len(poses), spec.height, spec.width, 3), np.uint8)
    keypoints = np.zeros((len(poses), NUM_KEYPOINTS, 3), np.float32)
    for t, pose in enumerate(poses):
        points, right_palm, left_palm = _skeleton(pose, static)
        px = look.px(points)
        img = body.copy()
        _draw_arm_and_hand(img, look, px[L_SHOULDER], px[L_ELBOW], px[LEFT_HAND:LEFT_HAND + 21],
                           look.px(left_palm), LEFT_HAND_RGB)
        _draw_arm_and_hand(img, look, px[R_SHOULDER], px[R_ELBOW], px[RIGHT_HAND:RIGHT_HAND + 21],
                           look.px(right_palm), RIGHT_HAND_RGB)
        frames[t] = img
        inside = (np.isfinite(px).all(1) & (px[:, 0] >= 0) & (px[:, 0] <= spec.width - 1)
                  & (px[:, 1] >= 0) & (px[:, 1] <= spec.height - 1))
        keypoints[t, inside, :2] = px[inside]
        keypoints[t, inside, 2] = 1.0
    return frames, keypoints


# ---------------------------------------------------------------- corpus

def plan_corpus(spec: CorpusSpec = CorpusSpec()) -> list[tuple[str, tuple[str, ...]]]:
    """(split, glosses) per video: ~70/15/15 splits, none empty, dev/test glosses all in train.

    Train sentences deal glosses from shuffled decks so that every gloss is trained on when there
    are enough train slots; dev and test sentences only use glosses that train has.
    """
    rng = np.random.default_rng(spec.seed)
    n = spec.num_videos
    n_dev = max(1, round(n * spec.dev_fraction))
    n_test = max(1, round(n * spec.test_fraction))
    n_train = n - n_dev - n_test
    if n_train < 1:
        raise InputError("dev_fraction and test_fraction leave no train videos")
    deck: list[str] = []

    def sentence(draw: Callable[[], str]) -> tuple[str, ...]:
        glosses: list[str] = []
        for _ in range(rng.integers(spec.min_glosses, spec.max_glosses + 1)):
            repeat = glosses and rng.random() < spec.repeat_prob
            glosses.append(glosses[-1] if repeat else draw())
        return tuple(glosses)

    def from_deck() -> str:
        if not deck:
            deck.extend(rng.permutation(GLOSSES).tolist())
        return deck.pop()

    train = [sentence(from_deck) for _ in range(n_train)]
    seen = sorted({g for s in train for g in s})
    held_out = [sentence(lambda: str(rng.choice(seen))) for _ in range(n_dev + n_test)]
    splits = ["train"] * n_train + ["dev"] * n_dev + ["test"] * n_test
    sentences = train + held_out
    order = rng.permutation(n)  # video index -> plan entry, so splits are interleaved
    return [(splits[i], sentences[i]) for i in order]


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"{index:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])


def _decoded_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        while capture.isOpened() and capture.grab():
            count += 1
    finally:
        capture.release()
    return count


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> bool:
    """Write an mp4v file atomically; False (and nothing written) if it does not read back whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        tmp.unlink(missing_ok=True)
        return False
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    if _decoded_frames(tmp) != len(frames):
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, path)
    return True


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, path)


def make_corpus(out_dir: str | Path, spec: CorpusSpec = CorpusSpec()) -> Path:
    """Render the corpus under ``out_dir``; returns the path of its ``manifest.jsonl``.

    Writes ``videos/<id>.mp4`` (or ``frames/<id>/000001.png ...`` for every ``folder_every``-th
    video), ``manifest.jsonl``, ``vocabulary.json`` (train glosses) and ``keypoints_gt.npz``
    (key = video id, [T, 133, 3] float32 COCO-WholeBody ground truth in pixels).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, truth = [], {}
    for index, (split, glosses) in enumerate(plan_corpus(spec)):
        video_id = f"demo-{index + 1:04d}"
        rng = np.random.default_rng((spec.seed, index + 1))  # each video on its own stream
        frames, keypoints = render_video(list(glosses), spec, rng)
        video = f"videos/{video_id}.mp4"
        as_folder = index % spec.folder_every == spec.folder_every - 1
        if not as_folder and not _write_mp4(out_dir / video, frames, spec.fps):
            warnings.warn(f"{video_id}: the mp4v video did not read back; wrote PNG frames instead")
            as_folder = True
        if as_folder:
            video = f"frames/{video_id}"
            _write_frames(out_dir / video, frames)
        rows.append(ManifestRow(id=video_id, split=split, video=video, glosses=glosses,
                                signer=spec.signer, fps=spec.fps, num_frames=len(frames),
                                dataset="synthetic"))
        truth[video_id] = keypoints
    _save_npz(out_dir / "keypoints_gt.npz", truth)
    write_vocabulary(build_vocabulary(rows), out_dir / "vocabulary.json")
    manifest = out_dir / "manifest.jsonl"
    write_manifest(rows, manifest)
    return manifest
