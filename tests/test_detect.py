"""Landmark detection on real media: holistic and tasks backends, multi-person choice, odd inputs, missing files."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from emosh.errors import InputError, MissingModelError
from emosh.track.detect import (BODY, FACE, LEFT_HAND, RIGHT_HAND, TASK_FILES, Detector, FrameDetection,
                                MultiplePeopleWarning, _check_hands, detect_frames, stack_detections)
from emosh.video import read_frames, read_image


@pytest.fixture(scope="module")
def astronaut(astronaut_path) -> np.ndarray:
    return read_image(astronaut_path)


@pytest.fixture(scope="module")
def holistic_astronaut(astronaut) -> FrameDetection:
    with Detector("holistic", static_image=True) as detector:
        return detector(astronaut)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Pose and hand .task bundles built from the tflite models mediapipe 0.10.14 ships (no download)."""
    from emosh.track.task_bundles import build_bundles

    out = tmp_path_factory.mktemp("mediapipe_tasks")
    build_bundles(out)
    return out


def _face_box(det: FrameDetection) -> np.ndarray:
    face = det.landmarks[FACE]
    return np.concatenate([face.min(0), face.max(0)])


def _two_people(astronaut: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Astronaut at full size on the right, a 0.6x copy bottom-left; returns the image and the big copy's x range."""
    canvas = np.full((512, 840, 3), 200, np.uint8)
    canvas[:, 328:840] = astronaut
    canvas[205:512, 0:307] = cv2.resize(astronaut, (307, 307), interpolation=cv2.INTER_AREA)
    return canvas, (328, 840)


def test_astronaut_face_and_body(astronaut, holistic_astronaut):
    det = holistic_astronaut
    h, w = astronaut.shape[:2]
    assert det.landmarks.shape == (553, 2) and det.landmarks.dtype == np.float32
    assert det.confidence.shape == (553,) and det.confidence.dtype == np.float32
    assert 0.0 <= det.confidence.min() and det.confidence.max() <= 1.0
    assert det.num_people == 1
    assert det.part_found("body") and det.part_found("face")
    assert (det.confidence[FACE] == 1.0).all()
    face = det.landmarks[FACE]
    assert (face >= 0).all() and (face[:, 0] < w).all() and (face[:, 1] < h).all()
    x0, y0, x1, y1 = _face_box(det)
    assert y1 < h / 2, "the astronaut's face is in the upper half of the photo"
    assert 0.12 * w < x1 - x0 < 0.35 * w and 0.12 * h < y1 - y0 < 0.35 * h
    # The eyes are above the mouth (mesh 159/386 upper lids, 13 upper lip) and the nose tip (mesh 1) is inside the box.
    assert face[159, 1] < face[13, 1] and face[386, 1] < face[13, 1]
    assert x0 < face[1, 0] < x1
    # Person's sides: facing the camera, the person's left shoulder (11) and left eye (2) are on the image's right.
    assert det.landmarks[11, 0] > det.landmarks[12, 0] and det.landmarks[2, 0] > det.landmarks[5, 0]
    assert det.confidence[[11, 12]].min() > 0.9
    assert det.world_body is not None and det.world_body.shape == (33, 3)
    shoulder_m = np.linalg.norm(det.world_body[11] - det.world_body[12])
    assert 0.2 < shoulder_m < 0.6, "world landmarks are metric"
    # The face mesh and the pose's nose agree.
    assert np.linalg.norm(face[1] - det.landmarks[0]) < 0.1 * (x1 - x0) + 5


@pytest.mark.slow
def test_carphone_face_tracked(carphone_path):
    frames = read_frames(carphone_path, max_frames=60)  # 176x144: the detector enlarges internally
    done: list[int] = []
    dets = detect_frames(frames, progress=done.append)
    assert len(dets) == 60 and done[-1] == 60
    landmarks, confidence = stack_detections(dets)
    assert landmarks.shape == (60, 553, 2) and confidence.shape == (60, 553)
    found = confidence[:, FACE].max(1) > 0
    assert found.mean() >= 0.9
    face = landmarks[found][:, FACE]
    assert np.median(face[..., 0]) < 176 and np.median(face[..., 1]) < 144, "points are in the frame's own pixels"
    centres = face.mean(1)
    assert np.abs(np.diff(centres, axis=0)).max() < 15, "tracking jumps less than 15 px between frames"


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_person_gives_zero_confidence(kind):
    rng = np.random.default_rng(0)
    image = np.full((360, 480, 3), 128, np.uint8) if kind == "blank" else rng.integers(0, 256, (360, 480, 3), np.uint8)
    with Detector(static_image=True) as detector:
        det = detector(image)
    assert not det.found and det.num_people == 0
    assert (det.confidence == 0).all() and (det.landmarks == 0).all()


def test_several_people_keep_largest(astronaut):
    image, (big_x0, big_x1) = _two_people(astronaut)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Detector("holistic", static_image=True) as detector:
            det = detector(image)
            det_again = detector(image)
    people_warnings = [w for w in caught if issubclass(w.category, MultiplePeopleWarning)]
    assert len(people_warnings) == 1, "warned once per detector"
    assert "2 people" in str(people_warnings[0].message) and "largest" in str(people_warnings[0].message)
    for d in (det, det_again):
        assert d.num_people >= 2
        x0, _, x1, _ = _face_box(d)
        assert big_x0 < x0 and x1 < big_x1, "the full-size astronaut is the one kept"
        assert x1 - x0 > 0.12 * 512


def test_several_people_in_video_follow_largest(carphone_path):
    """Tracking: two talking heads (one 0.6x). The larger is kept, and when it leaves for a few frames the detector
    reports nothing there instead of jumping to the other person (plain holistic jumps and stays on the other)."""
    frames = read_frames(carphone_path, max_frames=30, long_side=352)  # 352x288
    small = [cv2.resize(f, (211, 173), interpolation=cv2.INTER_AREA) for f in frames[::-1]]
    video = np.full((30, 288, 352 + 221, 3), 90, np.uint8)
    video[:, :, 221:] = frames
    for k in range(30):
        video[k, 288 - 173:, :211] = small[k]
    video[10:15, :, 221:] = 90  # the larger person is out of view for 5 frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dets = detect_frames(video)
    assert sum(issubclass(w.category, MultiplePeopleWarning) for w in caught) == 1
    assert np.mean([d.num_people >= 2 for d in dets[:10]]) >= 0.8
    faces = [d.landmarks[FACE][:, 0].min() if d.part_found("face") else None for d in dets]
    assert all(x is None or x > 221 for x in faces), "never switched to the smaller person"
    visible = [x is not None for k, x in enumerate(faces) if not 10 <= k < 15]
    assert np.mean(visible) >= 0.9


def test_odd_inputs(astronaut, holistic_astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    rgba = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], 2)
    tiny = cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA)
    big = cv2.resize(astronaut, (3840, 3840), interpolation=cv2.INTER_LINEAR)
    ref = _face_box(holistic_astronaut)
    with Detector(static_image=True) as detector:
        for image in (gray, rgba):
            det = detector(image)
            assert det.part_found("face")
            assert np.abs(_face_box(det) - ref).max() < 0.03 * 512
        det_tiny = detector(tiny)
        assert det_tiny.landmarks.shape == (553, 2)
        assert det_tiny.part_found("face"), "enlarged internally, a 64 px photo still shows a face"
        assert np.abs(_face_box(det_tiny) * 8 - ref).max() < 0.05 * 512, "points are in the 64 px frame's pixels"
        with pytest.raises(InputError, match="empty image"):
            detector(np.zeros((0, 10, 3), np.uint8))
        det_big = detector(big)
        assert det_big.part_found("face")
        assert np.abs(_face_box(det_big) / 7.5 - ref).max() < 0.03 * 512, "4K points map back to 4K pixels"


def test_missing_task_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingModelError) as err:
        Detector("tasks")
    message = str(err.value)
    for name in TASK_FILES.values():
        assert name in message
    assert str(tmp_path / "models" / "mediapipe") in message
    assert "https://storage.googleapis.com/mediapipe-models/pose_landmarker/" in message


def test_tasks_backend_matches_holistic(task_dir, astronaut, holistic_astronaut):
    with pytest.warns(UserWarning, match="face_landmarker.task"):
        detector = Detector("tasks", model_dir=task_dir, static_image=True)
    with detector:
        det = detector(astronaut)
    ref = holistic_astronaut
    assert det.num_people == 1 and det.part_found("body")
    assert not det.part_found("face"), "no face bundle was given"
    seen = (det.confidence[BODY] > 0.5) & (ref.confidence[BODY] > 0.5)
    assert seen.sum() >= 11  # head and shoulders: the photo ends at the chest
    diff = np.linalg.norm(det.landmarks[BODY] - ref.landmarks[BODY], axis=1)[seen]
    assert np.median(diff) < 0.01 * 512 and diff.max() < 0.05 * 512
    assert det.world_body is not None and det.world_body.shape == (33, 3)


def test_tasks_backend_several_people(task_dir, astronaut):
    image, (big_x0, big_x1) = _two_people(astronaut)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Detector("tasks", model_dir=task_dir, static_image=True) as detector:
            det = detector(image)
    assert any(issubclass(w.category, MultiplePeopleWarning) for w in caught)
    assert det.num_people >= 2
    shoulders = det.landmarks[[11, 12], 0]
    assert (big_x0 < shoulders).all() and (shoulders < big_x1).all(), "the full-size astronaut is the one kept"


@pytest.mark.slow
def test_tasks_hands_on_dance_video(task_dir, shared_real):
    """Video mode on a real dance: body and hands agree with holistic, and hands land on the same anatomical side."""
    frames = read_frames(shared_real / "fullbody_dance.mp4", max_frames=30, long_side=512)
    height = frames.shape[1]
    ref = detect_frames(frames, backend="holistic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no face bundle
        got = detect_frames(frames, backend="tasks", model_dir=task_dir)
    body_err = [np.median(np.linalg.norm(a.landmarks[BODY] - b.landmarks[BODY], axis=1)) for a, b in zip(got, ref)]
    assert np.median(body_err) < 0.01 * height
    compared = 0
    for a, b in zip(got, ref):
        for group in (LEFT_HAND, RIGHT_HAND):
            if a.confidence[group].any() and b.confidence[group].any():
                compared += 1
                assert np.linalg.norm(a.landmarks[group][0] - b.landmarks[group][0]) < 0.05 * height
    assert compared >= 15
    assert np.mean([d.part_found("left_hand") or d.part_found("right_hand") for d in got]) > 0.5


def test_implausible_hands_are_down_weighted(holistic_astronaut):
    """A hand hanging off a barely visible wrist keeps that visibility as confidence; a collapsed hand is dropped."""
    det = FrameDetection(holistic_astronaut.landmarks.copy(), holistic_astronaut.confidence.copy())
    shoulder = float(np.linalg.norm(det.landmarks[11] - det.landmarks[12]))
    rng = np.random.default_rng(1)
    det.landmarks[LEFT_HAND] = det.landmarks[15] + rng.uniform(0, 0.5 * shoulder, (21, 2))
    det.landmarks[RIGHT_HAND] = det.landmarks[16] + rng.uniform(0, 0.02 * shoulder, (21, 2))
    det.confidence[LEFT_HAND] = det.confidence[RIGHT_HAND] = 1.0
    det.confidence[15], det.confidence[16] = 0.2, 0.9
    _check_hands(det)
    assert np.allclose(det.confidence[LEFT_HAND], 0.2)
    assert not det.part_found("right_hand") and (det.landmarks[RIGHT_HAND] == 0).all()


def test_clothing_is_not_a_second_person(shared_real):
    """The face detector fires on the jeans buttons in this frame; that must not count as a second person."""
    frame = read_frames(shared_real / "fullbody_dance.mp4", start=125, max_frames=1, long_side=512)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Detector("holistic", static_image=True) as detector:
            det = detector(frame)
    assert det.num_people == 1 and det.part_found("body") and det.part_found("face")
    assert not any(issubclass(w.category, MultiplePeopleWarning) for w in caught)


def test_tasks_face_blendshapes_map_to_anny_order(holistic_astronaut):
    """FaceLandmarker output (no official face_landmarker.task offline, so its result is mimicked from the holistic
    face mesh): the face nearest the body's nose is kept and the 52 scores are reordered by name into Anny's order."""
    from types import SimpleNamespace

    from anny.models.facial_actions import FACIAL_ACTION_LABELS

    from emosh.track.detect import _TasksBackend

    backend = object.__new__(_TasksBackend)  # only the name table is needed, not the tasks graphs
    backend._blend_index = {name: i for i, name in enumerate(FACIAL_ACTION_LABELS)}
    size = 512.0
    mesh = holistic_astronaut.landmarks[FACE] / size
    stranger = mesh * 0.3 + 0.65  # a small face far from this body's nose
    as_landmarks = lambda pts: [SimpleNamespace(x=float(x), y=float(y)) for x, y in pts]  # noqa: E731
    names = ["_neutral"] + [n for n in FACIAL_ACTION_LABELS if n != "tongueOut"]
    scores = {n: (i % 10) / 10 for i, n in enumerate(names)}
    categories = [SimpleNamespace(category_name=n, score=scores[n]) for n in reversed(names)]
    result = SimpleNamespace(face_landmarks=[as_landmarks(stranger), as_landmarks(mesh)],
                             face_blendshapes=[[], categories])
    det = FrameDetection(holistic_astronaut.landmarks.copy(), holistic_astronaut.confidence.copy(), num_people=1)
    det.confidence[FACE], det.landmarks[FACE] = 0.0, 0.0
    backend._assign_face(det, result, (0.0, 0.0, size, size), np.array([100.0, 0.0, 400.0, 512.0]))
    assert np.allclose(det.landmarks[FACE], holistic_astronaut.landmarks[FACE], atol=1e-3)
    assert (det.confidence[FACE] == 1.0).all()
    assert det.blendshapes is not None and det.blendshapes.shape == (52,)
    for i, name in enumerate(FACIAL_ACTION_LABELS):
        assert det.blendshapes[i] == pytest.approx(scores.get(name, 0.0)), name


def test_hands_holistic_misses_are_found_on_wrist_crops(shared_real):
    """Half-body dance, hands near the frame edge: holistic alone finds fewer than 4 in 10 of the hands whose wrist
    it sees; the wrist-crop second look finds clearly more, and every hand it adds hangs off its own wrist."""
    from emosh.bench.tracker import hand_found_given_wrist
    from emosh.track.detect import stack_detections

    frames = read_frames(shared_real / "halfbody_dance.mp4", max_frames=60, long_side=512)
    runs = {}
    for recover in (False, True):
        with Detector(recover_hands=recover) as detector:
            runs[recover] = [detector(f) for f in frames]
    shares = {k: hand_found_given_wrist(*stack_detections(v), frames[0].shape[:2]) for k, v in runs.items()}
    assert shares[True] >= shares[False] + 0.08, shares
    added = 0
    for before, after in zip(runs[False], runs[True]):
        for group, wrist in ((LEFT_HAND, 15), (RIGHT_HAND, 16)):
            if after.confidence[group].any() and not before.confidence[group].any():
                added += 1
                span = np.ptp(after.landmarks[group], axis=0).max()
                assert np.linalg.norm(after.landmarks[group][0] - after.landmarks[wrist]) < 1.5 * span
    assert added >= 5
