"""2D landmark detection with mediapipe: 33 body + 2x21 hand + 478 face points per frame, in the EHMTrack layout.

Two backends give the same ``FrameDetection``:

* ``holistic``: mediapipe 0.10.14's legacy ``solutions.holistic`` (model_complexity=1, refined face). Its models ship
  inside the wheel, so it runs offline with nothing to install. It follows one person.
* ``tasks``: the Tasks API (PoseLandmarker, HandLandmarker, optional FaceLandmarker with ARKit blendshapes) from the
  official ``.task`` files the user puts in ``<models>/emosh/mediapipe/``; the only choice on Python 3.13, where no
  mediapipe wheel ships the legacy models (see docs/mediapipe.md).

Sides are the PERSON's anatomical sides everywhere: body landmark 11 is the person's left shoulder, the
``left_hand`` group (33:54) is the person's left hand, which appears on the image's right when the person faces the
camera. Coordinates are pixels of the frame given to the detector; detection itself runs at a long side of
``DETECT_LONG_SIDE`` px (big frames are shrunk, small ones enlarged) and the points are mapped back.

Several people: holistic alone follows whichever person its pose detector likes, and after losing its person for a
moment it jumps to another one and stays there. A face detector counts the people (every 5th frame while one is in
view); once it sees several, holistic runs on a crop around one of them (the person it was already following, else
the largest), keeps following that person, and a ``MultiplePeopleWarning`` is issued once per detector. The tasks
backend asks its pose model for several people and keeps the largest (then the nearest to the previous choice).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from ..body.track import LANDMARK_GROUPS, NUM_LANDMARKS
from ..errors import InputError, MissingModelError
from ..mediapipe_import import import_mediapipe
from ..paths import find_model_file
from ..video import resize_long_side, to_rgb

DETECT_LONG_SIDE = 512  # holistic's own inputs are 256 (pose) / 192 (face); 512 keeps hands and faces resolvable
NUM_BODY, NUM_HAND, NUM_FACE = 33, 21, 478
BODY = slice(*LANDMARK_GROUPS["body"])
LEFT_HAND = slice(*LANDMARK_GROUPS["left_hand"])
RIGHT_HAND = slice(*LANDMARK_GROUPS["right_hand"])
FACE = slice(*LANDMARK_GROUPS["face"])
BACKENDS = ("auto", "holistic", "tasks")

# Official Tasks-API bundles (names as published on Google's MediaPipe model pages) and where users get them.
TASK_FILES = {
    "pose": "pose_landmarker_full.task",
    "hand": "hand_landmarker.task",
    "face": "face_landmarker.task",
}
TASK_URLS = {
    "pose": "https://storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full/float16/latest/"
            "pose_landmarker_full.task",
    "hand": "https://storage.googleapis.com/mediapipe-models/hand_landmarker/hand_landmarker/float16/latest/"
            "hand_landmarker.task",
    "face": "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/"
            "face_landmarker.task",
}

_L_WRIST, _R_WRIST, _NOSE = 15, 16, 0
_MAX_PEOPLE = 4
_MIN_HAND_PX = 4.0  # a hand spanning fewer pixels (in the detection image) is a collapsed detection


class MultiplePeopleWarning(UserWarning):
    """More than one person was seen; only one (the one already tracked, else the largest) is followed."""


@dataclass
class FrameDetection:
    """Landmarks of one person in one frame, in pixels of the frame given (layout: ``LANDMARK_GROUPS``)."""

    landmarks: np.ndarray  # [553, 2] float32 (x, y) px; zeros where not seen
    confidence: np.ndarray  # [553] float32 in [0, 1]; body = visibility*presence, face = 1, hands = score or 1
    #                         (capped by the body wrist's visibility), 0 where unseen
    world_body: np.ndarray | None = None  # [33, 3] metric landmarks (m, hip-centred) from the pose model
    blendshapes: np.ndarray | None = None  # [52] ARKit scores in Anny's facial_action_labels order (tasks + face)
    num_people: int = 0  # people the detector saw in this frame (the tracked one included)
    mask: np.ndarray | None = None  # [H, W] float32 person probability (still photos only: it shapes the body)

    @classmethod
    def empty(cls, num_people: int = 0) -> "FrameDetection":
        return cls(np.zeros((NUM_LANDMARKS, 2), np.float32), np.zeros(NUM_LANDMARKS, np.float32),
                   num_people=num_people)

    @property
    def found(self) -> bool:
        """Whether any part of the person was detected."""
        return bool((self.confidence > 0).any())

    def part_found(self, part: str) -> bool:
        """Whether the group ``part`` (a LANDMARK_GROUPS key) was detected."""
        return bool((self.confidence[slice(*LANDMARK_GROUPS[part])] > 0).any())

    def scaled(self, sx: float, sy: float) -> "FrameDetection":
        """The same detection with pixel coordinates multiplied by (sx, sy) (unseen points stay at zero)."""
        landmarks = self.landmarks * np.array([sx, sy], np.float32)
        mask = None
        if self.mask is not None:
            h, w = self.mask.shape
            mask = cv2.resize(self.mask, (max(round(w * sx), 1), max(round(h * sy), 1)), interpolation=cv2.INTER_LINEAR)
        return FrameDetection(landmarks, self.confidence, self.world_body, self.blendshapes, self.num_people, mask)


def holistic_available() -> bool:
    """True when mediapipe's legacy ``solutions.holistic`` (which ships its models) can be imported."""
    try:
        return hasattr(import_mediapipe().solutions.holistic, "Holistic")
    except (ImportError, AttributeError, InputError):
        return False


def _points(landmarks: Sequence[Any], box: tuple[float, float, float, float]) -> np.ndarray:
    """Normalised mediapipe landmarks inside ``box`` = (x0, y0, width, height) px → [N, 2] px."""
    x0, y0, w, h = box
    xy = np.array([(p.x, p.y) for p in landmarks], np.float32)
    return xy * np.array([w, h], np.float32) + np.array([x0, y0], np.float32)


def _body_confidence(landmarks: Sequence[Any]) -> np.ndarray:
    """visibility x presence; legacy solutions fill only visibility (presence unset counts as 1)."""
    out = np.empty(len(landmarks), np.float32)
    for i, p in enumerate(landmarks):
        vis = getattr(p, "visibility", None)
        pres = getattr(p, "presence", None)
        if hasattr(p, "HasField"):  # protobuf (legacy solutions): unset optional fields read as 0
            vis = p.visibility if p.HasField("visibility") else None
            pres = p.presence if p.HasField("presence") else None
        out[i] = (1.0 if vis is None else vis) * (1.0 if pres is None else pres)
    return np.clip(out, 0.0, 1.0)


def _world(landmarks: Sequence[Any] | None) -> np.ndarray | None:
    if not landmarks:
        return None
    return np.array([(p.x, p.y, p.z) for p in landmarks], np.float32)


def _bbox(xy: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(x0, y0, x1, y1) of the points (those with weight > 0.5 when given and any qualify)."""
    if weight is not None and (weight > 0.5).sum() >= 3:
        xy = xy[weight > 0.5]
    return np.concatenate([xy.min(0), xy.max(0)])


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def _check_hands(det: FrameDetection) -> FrameDetection:
    """Down-weight implausible hands in place: the hand models sometimes "find" a hand on a blurred face or collapse
    to a point. A hand whose body wrist is barely visible gets that visibility as its confidence (below the fitter's
    gate for the cases seen on the test videos); a hand smaller than a tenth of the shoulder width is dropped."""
    body_conf = det.confidence[BODY]
    shoulders = float(np.linalg.norm(det.landmarks[11] - det.landmarks[12])) if body_conf[[11, 12]].min() > 0.5 else 0
    for group, wrist in ((LEFT_HAND, _L_WRIST), (RIGHT_HAND, _R_WRIST)):
        if not det.confidence[group].any():
            continue
        span = float(np.ptp(det.landmarks[group], axis=0).max())
        if span < max(_MIN_HAND_PX, 0.1 * shoulders):
            det.landmarks[group], det.confidence[group] = 0.0, 0.0
        elif det.part_found("body") and body_conf[wrist] < 0.5:
            det.confidence[group] = np.minimum(det.confidence[group], body_conf[wrist])
    return det


class _HandRecovery:
    """Second look for hands holistic missed: mediapipe's own hand model (palm detector + landmarks, shipped in
    0.10.14) on a square crop around the pose model's wrist, index and pinky points, or around where the hand was in
    the previous frame. Holistic finds its hands from the pose's wrist region at 256 px for the whole body, so
    small hands, hands near the frame edge and fast (blurred) hands are lost; the crop shows them at full size.
    A hand found in the crop counts only when its wrist lies near the pose wrist and it is not the other hand."""

    _CROP_FOREARMS = 1.6  # crop side, in forearm lengths (a hand is about 0.6 of one)
    _CROP_PX = 256  # the crop is resized to this side before the hand model sees it
    _NEAR = 0.35  # max distance of the found wrist from the pose wrist, in crop sides

    def __init__(self):
        mp = import_mediapipe()
        self._hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=1, model_complexity=1,
                                               min_detection_confidence=0.5)
        self._previous: dict[int, np.ndarray | None] = {_L_WRIST: None, _R_WRIST: None}  # hand box (x0, y0, x1, y1)

    def close(self) -> None:
        self._hands.close()

    def __call__(self, image: np.ndarray, det: FrameDetection) -> FrameDetection:
        """Fill the missing hands of ``det`` (pixels of ``image``) in place; returns ``det``."""
        h, w = image.shape[:2]
        sides = ((LEFT_HAND, _L_WRIST, 13, RIGHT_HAND), (RIGHT_HAND, _R_WRIST, 14, LEFT_HAND))
        for group, wrist, elbow, other in sides:
            if not det.confidence[group].any():
                box = self._crop(det, wrist, elbow, w, h)
                found = None if box is None else self._detect(image, box)
                if found is not None and self._plausible(found, det, wrist, other, box):
                    det.landmarks[group], det.confidence[group] = found, 1.0
            self._previous[wrist] = _bbox(det.landmarks[group]) if det.confidence[group].any() else None
        return det

    def _crop(self, det: FrameDetection, wrist: int, elbow: int, w: int, h: int) -> np.ndarray | None:
        """Square (x0, y0, x1, y1) px to search, or None when the pose does not place the hand in the image."""
        previous = self._previous[wrist]
        conf = det.confidence
        if previous is not None:
            centre, side = 0.5 * (previous[:2] + previous[2:]), 2.0 * float(np.max(previous[2:] - previous[:2]))
        elif det.part_found("body") and conf[wrist] >= 0.5 and conf[elbow] >= 0.5:
            hand_points = det.landmarks[[wrist, wrist + 2, wrist + 4]]  # wrist, pinky, index (pose model)
            centre = hand_points.mean(0)
            side = self._CROP_FOREARMS * float(np.linalg.norm(det.landmarks[wrist] - det.landmarks[elbow]))
        else:
            return None
        anchor = det.landmarks[wrist] if det.part_found("body") else centre
        if side < 4 * _MIN_HAND_PX or not (0 <= anchor[0] < w and 0 <= anchor[1] < h):
            return None  # a hand whose wrist is in the image may still be cut by the frame edge: look anyway
        return np.concatenate([centre - side / 2, centre + side / 2]).astype(np.float32)

    def _detect(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """[21, 2] px of the hand found in ``box`` (padded with black where it leaves the image), or None."""
        side = float(box[2] - box[0])
        scale = self._CROP_PX / side
        matrix = np.array([[scale, 0.0, -box[0] * scale], [0.0, scale, -box[1] * scale]], np.float32)
        crop = cv2.warpAffine(image, matrix, (self._CROP_PX, self._CROP_PX), flags=cv2.INTER_AREA
                              if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        result = self._hands.process(crop)
        if not result.multi_hand_landmarks:
            return None
        return _points(result.multi_hand_landmarks[0].landmark, (float(box[0]), float(box[1]), side, side))

    def _plausible(self, hand: np.ndarray, det: FrameDetection, wrist: int, other: slice, box: np.ndarray) -> bool:
        side = float(box[2] - box[0])
        if det.confidence[wrist] >= 0.5 and np.linalg.norm(hand[0] - det.landmarks[wrist]) > self._NEAR * side:
            return False
        if det.confidence[other].any() and np.linalg.norm(hand[0] - det.landmarks[other][0]) < 0.1 * side:
            return False  # the hand the other side already has
        return True


class _PeopleCounter:
    """Face boxes (px) of everyone in a frame, from mediapipe's full-range face detector (ships in 0.10.14).

    The detector letterboxes its input to a 192 px square, so on a wide frame small faces shrink below what it can
    see; it therefore runs on overlapping square tiles along the long side (one tile for a square frame).
    """

    def __init__(self):
        mp = import_mediapipe()
        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)

    @staticmethod
    def tiles(width: int, height: int) -> list[tuple[int, int, int, int]]:
        side, long = min(width, height), max(width, height)
        if long - side < 0.1 * side:
            return [(0, 0, width, height)]
        offsets = np.linspace(0, long - side, int(np.ceil(long / side)) + 1).round().astype(int).tolist()
        return [(o, 0, o + side, height) if width >= height else (0, o, width, o + side) for o in offsets]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        h, w = image.shape[:2]
        boxes = []
        for x0, y0, x1, y1 in self.tiles(w, h):
            result = self._detector.process(np.ascontiguousarray(image[y0:y1, x0:x1]))
            for det in result.detections or []:
                b = det.location_data.relative_bounding_box
                tw, th = x1 - x0, y1 - y0
                boxes.append(np.array([x0 + b.xmin * tw, y0 + b.ymin * th, x0 + (b.xmin + b.width) * tw,
                                       y0 + (b.ymin + b.height) * th], np.float32))
        return _suppress_overlaps(boxes)

    def close(self) -> None:
        self._detector.close()


def _suppress_overlaps(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Drop boxes whose centre lies inside a larger kept box (one face reported twice is one person)."""
    kept: list[np.ndarray] = []
    for box in sorted(boxes, key=_area, reverse=True):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if not any(k[0] <= cx <= k[2] and k[1] <= cy <= k[3] for k in kept):
            kept.append(box)
    return kept


def _nearest(centres: list[np.ndarray], point: np.ndarray, size: float = 0.0) -> np.ndarray | None:
    """The face (x, y, width) nearest ``point``, if closer than 1.5 face widths (or 1.5 ``size``)."""
    if not centres:
        return None
    best = min(centres, key=lambda c: float(np.hypot(*(c[:2] - point[:2]))))
    return best if np.hypot(*(best[:2] - point[:2])) < 1.5 * max(best[2], size) else None


def _below_shoulders(face: np.ndarray, det: FrameDetection) -> bool:
    """Whether a face box's centre lies on ``det``'s person below the shoulders (within the shoulder/hip x range):
    no other person's face is there, but the face detector sometimes fires on clothing (jeans buttons, seen on
    fullbody_dance.mp4)."""
    torso = [11, 12, 23, 24]
    if det.confidence[torso].min() < 0.5:
        return False
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    xs = det.landmarks[torso, 0]
    return bool(xs.min() <= cx <= xs.max() and cy > det.landmarks[[11, 12], 1].max())


class _HolisticBackend:
    """mediapipe solutions.holistic; once several faces are seen, it runs on a crop that follows one person."""

    # A person's box from their face box, in face widths: arms spread ~4.5 either side, feet ~10 below the eyes.
    _CROP_SIDE, _CROP_UP, _CROP_DOWN = 4.5, 1.5, 11.0
    _LOST_FRAMES = 30  # frames with neither the tracked face nor a body in the crop before re-picking the largest
    _COUNT_EVERY = 5  # while one person is in view, look for others every 5th frame (face detection costs ~10 ms)

    def __init__(self, static_image: bool):
        mp = import_mediapipe()
        self._static = static_image
        self._holistic = mp.solutions.holistic.Holistic(
            static_image_mode=static_image, model_complexity=1, refine_face_landmarks=True,
            smooth_landmarks=not static_image, enable_segmentation=static_image)
        self._counter = _PeopleCounter()
        self._target: np.ndarray | None = None  # tracked person: (face centre x, y, face width) px
        self._lost = 0
        self._last: FrameDetection | None = None  # holistic's person in the previous frame (tracking mode)
        self._frame = 0
        self._people = 0  # people seen at the last count
        self.warning: str | None = None  # set on the first frame with several people

    def close(self) -> None:
        self._holistic.close()
        self._counter.close()

    def detect(self, image: np.ndarray) -> FrameDetection:
        h, w = image.shape[:2]
        full_box = (0.0, 0.0, float(w), float(h))
        if self._static:
            self._target = None
        faces: list[np.ndarray] = []
        whole: FrameDetection | None = None  # holistic on the whole frame, when already run
        counted = self._static or self._target is not None or self._frame % self._COUNT_EVERY == 0
        if counted:
            faces = self._counter(image)
            reference = self._last
            if self._static and len(faces) >= 2:  # no previous frame: see who holistic finds on its own first
                whole = reference = self._run(image, full_box)
            if reference is not None:  # a "face" on the tracked person's torso or legs is a false detection
                faces = [f for f in faces if not _below_shoulders(f, reference)]
        self._frame += 1
        crop = self._crop_box(faces, w, h)
        if crop is None:
            det = whole if whole is not None else self._run(image, full_box)
        else:
            x0, y0, x1, y1 = crop
            sub = np.ascontiguousarray(image[y0:y1, x0:x1])
            self._blank_others(sub, faces, crop)
            det = self._run(sub, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
            if det.mask is not None:  # the crop's mask, placed in the whole frame
                full = np.zeros((h, w), np.float32)
                full[y0:y1, x0:x1] = det.mask
                det.mask = full
        if counted:
            self._people = sum(not _below_shoulders(f, det) for f in faces)
        det.num_people = max(self._people, int(det.found))
        body = det.part_found("body")
        self._last = det if body and not self._static else None
        if crop is not None and body:  # still following our person, even with the face turned away
            self._target = np.array([*det.landmarks[_NOSE], self._target[2]], np.float32)
            self._lost = 0
        return det

    def _run(self, image: np.ndarray, box: tuple[float, float, float, float]) -> FrameDetection:
        """Holistic on ``image``, which shows ``box`` = (x0, y0, w, h) of the detection image."""
        return _check_hands(self._convert(self._holistic.process(image), box))

    def _crop_box(self, faces: list[np.ndarray], w: int, h: int) -> tuple[int, int, int, int] | None:
        """Region holistic should see: None (whole frame) while only one person has ever been seen.

        At the first frame with several people the person holistic was already following is kept (a track must not
        jump between people); with no such person, the largest face wins. Afterwards the crop follows that person.
        """
        centres = [np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]], np.float32) for b in faces]
        if self._target is None:
            if len(faces) < 2:
                return None
            tracked = _nearest(centres, self._last.landmarks[_NOSE]) if self._last is not None else None
            self._target = tracked if tracked is not None else max(centres, key=lambda c: c[2])
            which = "the person already being tracked" if tracked is not None else "the largest"
            self.warning = (f"{len(faces)} people are visible; tracking only {which} (face about "
                            f"{self._target[2]:.0f} px wide at x={self._target[0]:.0f}, y={self._target[1]:.0f} in "
                            f"the {w}x{h} detection image); the others are ignored.")
        else:
            best = _nearest(centres, self._target[:2], self._target[2])
            if best is not None:
                self._target = 0.5 * self._target + 0.5 * best  # damp the crop so tracking sees a steady window
                self._lost = 0
            else:
                self._lost += 1
                if self._lost > self._LOST_FRAMES and centres:
                    self._target = max(centres, key=lambda c: c[2])
                    self._lost = 0
        cx, cy, fw = (float(v) for v in self._target)
        x0 = int(np.clip(cx - self._CROP_SIDE * fw, 0, w - 1))
        x1 = int(np.clip(cx + self._CROP_SIDE * fw, x0 + 1, w))
        y0 = int(np.clip(cy - self._CROP_UP * fw, 0, h - 1))
        y1 = int(np.clip(cy + self._CROP_DOWN * fw, y0 + 1, h))
        return x0, y0, x1, y1

    def _blank_others(self, sub: np.ndarray, faces: list[np.ndarray], crop: tuple[int, int, int, int]) -> None:
        """Grey out other people's faces inside the crop so holistic's pose detector cannot lock onto them."""
        x0, y0 = crop[0], crop[1]
        for b in faces:
            centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], np.float32)
            if np.hypot(*(centre - self._target[:2])) < 0.75 * self._target[2]:
                continue  # the tracked face
            pad = 0.25 * (b[2] - b[0])
            bx0, by0 = int(max(b[0] - pad - x0, 0)), int(max(b[1] - pad - y0, 0))
            bx1, by1 = int(min(b[2] + pad - x0, sub.shape[1])), int(min(b[3] + pad - y0, sub.shape[0]))
            if bx1 > bx0 and by1 > by0:
                sub[by0:by1, bx0:bx1] = 127

    @staticmethod
    def _convert(result: Any, box: tuple[float, float, float, float]) -> FrameDetection:
        det = FrameDetection.empty()
        if result.pose_landmarks is not None:
            det.landmarks[BODY] = _points(result.pose_landmarks.landmark, box)
            det.confidence[BODY] = _body_confidence(result.pose_landmarks.landmark)
            if result.pose_world_landmarks is not None:
                det.world_body = _world(result.pose_world_landmarks.landmark)
        # mediapipe's left_hand_landmarks is the person's left hand (it hangs off pose landmark 15, the left wrist).
        for part, group in (("left_hand_landmarks", LEFT_HAND), ("right_hand_landmarks", RIGHT_HAND),
                            ("face_landmarks", FACE)):
            found = getattr(result, part)
            if found is not None:
                det.landmarks[group] = _points(found.landmark, box)
                det.confidence[group] = 1.0
        if getattr(result, "segmentation_mask", None) is not None and det.found:
            det.mask = np.asarray(result.segmentation_mask, np.float32)
        return det


class _TasksBackend:
    """mediapipe Tasks API (Pose/Hand/FaceLandmarker) from the user's .task files."""

    def __init__(self, static_image: bool, model_dir: str | os.PathLike | None):
        mp = import_mediapipe()
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        self._static = static_image
        mode = vision.RunningMode.IMAGE if static_image else vision.RunningMode.VIDEO
        pose_path = find_task_file("pose", model_dir)
        hand_path = find_task_file("hand", model_dir)
        try:
            face_path: Path | None = find_task_file("face", model_dir)
        except MissingModelError as exc:
            face_path = None
            warnings.warn(f"No face landmarks or blendshapes from the tasks backend: {exc}", stacklevel=3)
        self._pose = vision.PoseLandmarker.create_from_options(vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(pose_path)), running_mode=mode, num_poses=_MAX_PEOPLE,
            output_segmentation_masks=static_image))
        self._hand = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(hand_path)), running_mode=mode,
            num_hands=2 * _MAX_PEOPLE))
        self._face = None
        if face_path is not None:
            from anny.models.facial_actions import FACIAL_ACTION_LABELS

            self._blend_index = {name: i for i, name in enumerate(FACIAL_ACTION_LABELS)}
            self._face = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(face_path)), running_mode=mode,
                num_faces=_MAX_PEOPLE, output_face_blendshapes=True))
        self._frame = 0
        self._previous: np.ndarray | None = None  # chosen person's box in the previous frame
        self.warning: str | None = None

    def close(self) -> None:
        for task in (self._pose, self._hand, self._face):
            if task is not None:
                task.close()

    def _run(self, task: Any, image: Any) -> Any:
        if self._static:
            return task.detect(image)
        return task.detect_for_video(image, self._frame * 33)  # VIDEO mode needs increasing timestamps (ms)

    def detect(self, image: np.ndarray) -> FrameDetection:
        h, w = image.shape[:2]
        box = (0.0, 0.0, float(w), float(h))
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        pose = self._run(self._pose, mp_image)
        hands = self._run(self._hand, mp_image)
        faces = self._run(self._face, mp_image) if self._face is not None else None
        self._frame += 1

        det = FrameDetection.empty(num_people=len(pose.pose_landmarks))
        person_box = None
        if pose.pose_landmarks:
            people = [(_points(lm, box), _body_confidence(lm)) for lm in pose.pose_landmarks]
            boxes = [_bbox(xy, conf) for xy, conf in people]
            chosen = self._choose(boxes)
            if len(people) > 1 and self.warning is None:
                self.warning = (f"{len(people)} people are visible; tracking only the largest (box "
                                f"{boxes[chosen].round().tolist()} in the {w}x{h} detection image); "
                                f"the others are ignored.")
            det.landmarks[BODY], det.confidence[BODY] = people[chosen]
            det.world_body = _world(pose.pose_world_landmarks[chosen]) if pose.pose_world_landmarks else None
            person_box = boxes[chosen]
            if pose.segmentation_masks:
                det.mask = np.asarray(pose.segmentation_masks[chosen].numpy_view(), np.float32).reshape(h, w)
        self._assign_hands(det, hands, box, person_box)
        _check_hands(det)
        if faces is not None and faces.face_landmarks:
            self._assign_face(det, faces, box, person_box)
        return det

    def _choose(self, boxes: list[np.ndarray]) -> int:
        """The previous frame's person when one overlaps it, else the largest."""
        order = sorted(range(len(boxes)), key=lambda i: _area(boxes[i]), reverse=True)
        if self._previous is not None and not self._static:
            prev_c = (self._previous[:2] + self._previous[2:]) / 2
            size = np.hypot(*(self._previous[2:] - self._previous[:2]))
            dist = [np.hypot(*((boxes[i][:2] + boxes[i][2:]) / 2 - prev_c)) for i in range(len(boxes))]
            nearest = int(np.argmin(dist))
            if dist[nearest] < 0.3 * size:
                order = [nearest]
        self._previous = boxes[order[0]]
        return order[0]

    @staticmethod
    def _assign_hands(det: FrameDetection, hands: Any, box: tuple, person_box: np.ndarray | None) -> None:
        """Give each hand to the person's left/right side by its wrist's distance to the body's wrists.

        Without a body, fall back to the handedness label; on ordinary (unmirrored) video it names the person's own
        side (measured: 44 of 47 hands on fullbody_dance.mp4 agreed with the nearest body wrist).
        """
        candidates = []
        for lm, handed in zip(hands.hand_landmarks, hands.handedness):
            xy = _points(lm, box)
            score = float(handed[0].score) if handed else 1.0
            candidates.append((xy, score, handed[0].category_name if handed else ""))
        if not candidates:
            return
        if person_box is not None:
            reach = 0.2 * float(np.hypot(*(person_box[2:] - person_box[:2])))
            pairs = sorted((float(np.hypot(*(xy[0] - det.landmarks[BODY][wrist]))), k, group)
                           for k, (xy, _, _) in enumerate(candidates)
                           for wrist, group in ((_L_WRIST, LEFT_HAND), (_R_WRIST, RIGHT_HAND)))
            used_hands, used_groups = set(), set()
            for dist, k, group in pairs:
                if dist > reach or k in used_hands or group.start in used_groups:
                    continue
                det.landmarks[group], det.confidence[group] = candidates[k][0], candidates[k][1]
                used_hands.add(k)
                used_groups.add(group.start)
            return
        for xy, score, label in candidates:
            group = LEFT_HAND if label == "Left" else RIGHT_HAND
            if not det.confidence[group].any():
                det.landmarks[group], det.confidence[group] = xy, score

    def _assign_face(self, det: FrameDetection, faces: Any, box: tuple, person_box: np.ndarray | None) -> None:
        """The face nearest the body's nose (the largest face when there is no body)."""
        meshes = [_points(lm, box) for lm in faces.face_landmarks]
        if person_box is not None:
            nose = det.landmarks[BODY][_NOSE]
            dists = [float(np.hypot(*(m.mean(0) - nose))) for m in meshes]
            k = int(np.argmin(dists))
            face_size = float(np.hypot(*np.ptp(meshes[k], axis=0)))
            if dists[k] > face_size:
                return
        else:
            k = max(range(len(meshes)), key=lambda i: _area(_bbox(meshes[i])))
        det.landmarks[FACE], det.confidence[FACE] = meshes[k], 1.0
        if faces.face_blendshapes:
            scores = np.zeros(len(self._blend_index), np.float32)
            for cat in faces.face_blendshapes[k]:
                index = self._blend_index.get(cat.category_name)  # "_neutral" has no Anny action
                if index is not None:
                    scores[index] = cat.score
            det.blendshapes = np.clip(scores, 0.0, 1.0)
        if det.num_people == 0:
            det.num_people = len(meshes)


def find_task_file(part: str, model_dir: str | os.PathLike | None = None) -> Path:
    """The user's official .task file for ``part`` ('pose', 'hand' or 'face'); error says where to put/get it."""
    name = TASK_FILES[part]
    if model_dir is not None:
        for candidate in (Path(model_dir) / name, Path(model_dir) / "mediapipe" / name):
            if candidate.is_file():
                return candidate
    try:
        return find_model_file("mediapipe", [name])
    except MissingModelError as exc:
        where = f"{model_dir} or " if model_dir is not None else ""
        raise MissingModelError(
            f"The mediapipe tasks backend needs {name} (needed files: {', '.join(TASK_FILES.values())}). "
            f"Looked in {where}the model folders: {exc} Download it from {TASK_URLS[part]} "
            f"into <ComfyUI>/models/emosh/mediapipe/ or $EMOSH_MODELS_DIR/mediapipe/ (see docs/mediapipe.md)."
        ) from exc


class Detector:
    """Per-video landmark detector (a context manager). Holistic tracks across frames, so use one per video.

    ``backend``: "auto" (holistic when mediapipe ships it, else tasks), "holistic" or "tasks". ``model_dir``: a
    folder holding the .task files (tasks backend only; the usual model folders are searched too).
    ``static_image``: treat every frame independently (unrelated photos) instead of tracking.
    """

    def __init__(self, backend: str = "auto", model_dir: str | os.PathLike | None = None,
                 static_image: bool = False, detect_long_side: int = DETECT_LONG_SIDE, recover_hands: bool = True):
        if backend not in BACKENDS:
            raise InputError(f"Unknown detector backend {backend!r}; choose one of {BACKENDS}")
        if backend == "auto":
            backend = "holistic" if holistic_available() else "tasks"
        self.backend = backend
        self.detect_long_side = int(detect_long_side)
        self._impl: _HolisticBackend | _TasksBackend = (
            _HolisticBackend(static_image) if backend == "holistic" else _TasksBackend(static_image, model_dir))
        # holistic's misses get a second look on a wrist crop (the tasks backend has its own whole-frame hand model)
        self._hands = _HandRecovery() if recover_hands and backend == "holistic" else None
        self._warned = False

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None
        if self._hands is not None:
            self._hands.close()
            self._hands = None

    def __call__(self, frame_rgb_uint8: np.ndarray) -> FrameDetection:
        if self._impl is None:
            raise InputError("This Detector was closed; create a new one")
        frame = to_rgb(frame_rgb_uint8)
        h, w = frame.shape[:2]
        if h == 0 or w == 0:
            raise InputError(f"Cannot detect landmarks in an empty image (shape {frame.shape})")
        work = resize_long_side(frame, self.detect_long_side)
        work = np.ascontiguousarray(work)
        det = self._impl.detect(work)
        if self._hands is not None:
            det = _check_hands(self._hands(work, det))
        if self._impl.warning is not None and not self._warned:
            warnings.warn(self._impl.warning, MultiplePeopleWarning, stacklevel=2)
            self._warned = True
        return det.scaled(w / work.shape[1], h / work.shape[0])


def detect_frames(frames: Iterable[np.ndarray], backend: str = "auto", static_image: bool = False,
                  progress: Callable[[int], None] | None = None,
                  model_dir: str | os.PathLike | None = None) -> list[FrameDetection]:
    """Detect every frame of one video (or, with ``static_image``, of unrelated images); ``progress(done)``."""
    out: list[FrameDetection] = []
    with Detector(backend, model_dir=model_dir, static_image=static_image) as detector:
        for frame in frames:
            out.append(detector(frame))
            if progress is not None:
                progress(len(out))
    return out


def stack_detections(detections: Sequence[FrameDetection]) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [T, 553, 2] and confidence [T, 553] of a detection list (the EHMTrack fields)."""
    if not detections:
        raise InputError("No frames were detected")
    return (np.stack([d.landmarks for d in detections]).astype(np.float32),
            np.stack([d.confidence for d in detections]).astype(np.float32))
