"""Track Edit / Track Mix maths (emosh.edit), exports (emosh.export) and Wan face crops (emosh.facecrop).

Tracks are made from the real Anny model with seeded motion; exports are read back by an independent reader
(trimesh) or by forward kinematics written here, and must reproduce the body model's own joints and vertices.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import roma
import torch

from emosh import edit, export, facecrop
from emosh.body import EHMTrack
from emosh.body import joints
from emosh.body.camera import parse_camera_keys
from emosh.body.retime import retime
from emosh.body.camera import CameraKey, apply_camera_keys, project
from emosh.errors import InputError

from helpers import synthetic_track


def pelvis_pixels(track: EHMTrack) -> torch.Tensor:
    return project(track.translation[:, None], track.focal, track.cam_R, track.cam_t, track.image_size)[:, 0]


# ---------------------------------------------------------------------------------------------- edit
def test_edit_strengths_range_and_shape(anny):
    track = synthetic_track(anny, frames=8)
    out = edit.edit_track(track, anny, expression_strength=0.0, hand_strength=0.0, start=2, stop=6)
    assert out.num_frames == 4
    assert torch.equal(out.expression, torch.zeros_like(out.expression))
    hands = joints.hand_joints(anny)
    assert len(hands) == 2 * (1 + 5 * 3 + 4)  # wrist, 15 finger joints and 4 metacarpals per hand
    others = [i for i in range(len(anny.pose_labels)) if i not in hands]
    assert torch.equal(out.pose[:, hands], torch.zeros_like(out.pose[:, hands]))
    assert torch.equal(out.pose[:, others], track.pose[2:6, others])
    doubled = edit.edit_track(track, anny, expression_strength=2.0)
    assert doubled.expression.max() <= 1.0 and doubled.expression.max() > track.expression.max()

    taller = edit.edit_track(track, anny, shape_offsets={"height": 0.3, "weight": 0.0})
    h0 = anny.rest(track.shape).vertices[0, :, 2]
    h1 = anny.rest(taller.shape).vertices[0, :, 2]
    assert (h1.max() - h1.min()) > (h0.max() - h0.min()) + 0.05, "height slider must make the body taller"
    assert torch.equal(taller.pose, track.pose) and torch.equal(taller.expression, track.expression)
    with pytest.raises(InputError, match="no shape sliders"):
        edit.edit_track(track, anny, shape_offsets={"wingspan": 0.1})
    with pytest.raises(InputError):
        edit.edit_track(track, anny, start=5, stop=3)


def test_camera_keys_zoom_and_pan(anny):
    track = synthetic_track(anny, frames=5)
    keys = parse_camera_keys("# frame zoom pan_x pan_y\n0 1\n4, 2, 0.1, -0.05\n")
    assert keys == [CameraKey(0, 1.0), CameraKey(4, 2.0, 0.1, -0.05)]
    out = apply_camera_keys(track, keys)
    centre = torch.tensor([track.image_size[1] / 2, track.image_size[0] / 2])
    before, after = pelvis_pixels(track) - centre, pelvis_pixels(out) - centre
    assert torch.allclose(after[0], before[0], atol=1e-3)  # first key: unchanged
    # last key: twice as far from the centre, then moved by (0.1 W, -0.05 H) pixels
    expected = 2 * before[4] + torch.tensor([0.1 * track.image_size[1], -0.05 * track.image_size[0]])
    assert torch.allclose(after[4], expected, atol=0.05)
    zoom_mid = out.focal[2] / track.focal[2]
    assert abs(float(zoom_mid) - 1.5) < 1e-5  # linear between keys
    for bad in ("3", "a 1", "1 0", "1.5 1", "0 1\n0 2"):
        with pytest.raises(InputError):
            parse_camera_keys(bad)


# ---------------------------------------------------------------------------------------------- mix / resample
def test_slerp_and_retime(anny):
    a = torch.tensor([[0.0, 0.0, 0.2]])
    b = torch.tensor([[0.0, 0.0, 1.0]])
    mid = joints.slerp_rotvec(a, b, torch.tensor([0.5]))
    assert torch.allclose(mid, torch.tensor([[0.0, 0.0, 0.6]]), atol=1e-6)
    track = synthetic_track(anny, frames=9, fps=30.0)
    half = retime(track, 15.0)
    assert half.num_frames == 5 and half.fps == 15.0
    assert torch.allclose(half.expression, track.expression[::2], atol=1e-6)
    assert torch.allclose(roma.rotvec_to_rotmat(half.pose), roma.rotvec_to_rotmat(track.pose[::2]), atol=1e-5)


def test_mix_body_hands_face_with_offset_and_fps(anny):
    body = synthetic_track(anny, frames=10, fps=25.0, seed=1)
    hands = synthetic_track(anny, frames=40, fps=50.0, seed=2)
    face = synthetic_track(anny, frames=30, fps=25.0, seed=3)
    out = edit.mix_tracks(anny, body, hands, face, hands_offset=0.2, face_offset=0.4, face_parts=("expression", "jaw"))
    assert out.num_frames == 10 and out.fps == 25.0 and out.landmarks2d is None
    h = joints.hand_joints(anny)
    # output frame k is at k/25 s; the hands source is at 0.2 + k/25 s = frame 10 + 2k of a 50 fps track
    src = hands.pose[10:30:2][:, h]
    assert torch.allclose(roma.rotvec_to_rotmat(out.pose[:, h]), roma.rotvec_to_rotmat(src), atol=1e-5)
    groups = joints.expression_groups(anny)
    moved = groups["expression"] + groups["jaw"]
    assert torch.allclose(out.expression[:, moved], face.expression[10:20, moved], atol=1e-6)
    assert torch.equal(out.expression[:, groups["eyes"]], body.expression[:, groups["eyes"]])
    body_rows = [i for i in range(len(anny.pose_labels)) if i not in h]
    assert torch.equal(out.pose[:, body_rows], body.pose[:, body_rows])  # head not requested: stays the body's
    assert torch.equal(out.translation, body.translation) and torch.equal(out.cam_t, body.cam_t)
    # a source shorter than the body holds its last frame
    late = edit.mix_tracks(anny, body, face=face, face_offset=5.0, face_parts=("head",))
    heads = joints.head_joints(anny)
    assert torch.allclose(late.pose[:, heads], face.pose[-1:, heads].expand(10, -1, -1), atol=1e-6)
    assert "face (head)" in late.meta["mix"]


# ---------------------------------------------------------------------------------------------- exports
def _parse_bvh(text: str):
    names, parents, offsets, stack, pending = [], [], [], [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith(("ROOT", "JOINT")):
            names.append(s.split()[1])
            parents.append(stack[-1] if stack else -1)
            pending = len(names) - 1
        elif s == "End Site":
            pending = None
        elif s == "{":
            stack.append(pending)
        elif s == "}":
            stack.pop()
        elif s.startswith("OFFSET") and pending is not None:
            offsets.append([float(x) for x in s.split()[1:]])
        elif s == "MOTION":
            frames = int(lines[i + 1].split()[1])
            frame_time = float(lines[i + 2].split()[2])
            values = torch.tensor([[float(x) for x in row.split()] for row in lines[i + 3:i + 3 + frames]])
            return names, parents, torch.tensor(offsets), frame_time, values
    raise AssertionError("no MOTION section")


def test_bvh_forward_kinematics_reproduces_the_body_model(anny, tmp_path):
    track = synthetic_track(anny, frames=4, fps=20.0)
    path = export.write_bvh(tmp_path / "motion.bvh", anny, track, unit_scale=100.0)
    names, parents, offsets, frame_time, values = _parse_bvh(path.read_text())
    assert names == anny.joint_labels and frame_time == pytest.approx(0.05)
    assert values.shape == (4, 3 + 3 * len(names))  # root position + a rotation per joint
    rot = roma.euler_to_rotmat("ZXY", values[:, 3:].reshape(4, len(names), 3), degrees=True)
    world = torch.empty_like(rot)
    pos = torch.empty(4, len(names), 3)
    for j, p in enumerate(parents):
        if p < 0:
            world[:, j], pos[:, j] = rot[:, j], values[:, :3] + offsets[j]
        else:
            world[:, j] = world[:, p] @ rot[:, j]
            pos[:, j] = pos[:, p] + (world[:, p] @ offsets[j][:, None])[..., 0]
    _, joints = export.posed_meshes(anny, track)
    expected = joints @ export.to_y_up(anny).T * 100.0
    err = (pos - expected).norm(dim=-1)
    assert err.max() < 0.05, f"BVH joints differ from the body model by up to {err.max():.3f} cm"
    assert expected[..., 1].max() - expected[..., 1].min() > 100, "Y must be up (a standing person is > 1 m tall)"


def test_glb_and_ply_round_trip(anny, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    track = synthetic_track(anny, frames=3, fps=10.0)
    verts, _ = export.posed_meshes(anny, track)
    verts = (verts @ export.to_y_up(anny).T).numpy()
    path = export.write_glb(tmp_path / "motion.glb", anny, track)
    data = path.read_bytes()
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and total == len(data)
    json_len = struct.unpack("<I", data[12:16])[0]
    gltf = json.loads(data[20:20 + json_len])
    binary = data[20 + json_len + 8:]
    primitive = gltf["meshes"][0]["primitives"][0]
    assert len(primitive["targets"]) == 2
    sampler = gltf["animations"][0]["samplers"][0]

    def accessor(i):
        acc, view = gltf["accessors"][i], gltf["bufferViews"][gltf["accessors"][i]["bufferView"]]
        dtype = {5126: np.float32, 5125: np.uint32}[acc["componentType"]]
        width = {"SCALAR": 1, "VEC3": 3}[acc["type"]]
        return np.frombuffer(binary, dtype, acc["count"] * width, view["byteOffset"]).reshape(acc["count"], -1)

    times, weights = accessor(sampler["input"])[:, 0], accessor(sampler["output"]).reshape(3, 2)
    assert np.allclose(times, [0.0, 0.1, 0.2]) and np.array_equal(weights, [[0, 0], [1, 0], [0, 1]])
    base = accessor(primitive["attributes"]["POSITION"])
    for frame in range(3):
        shown = base + sum(w * accessor(t["POSITION"]) for w, t in zip(weights[frame], primitive["targets"]))
        assert np.abs(shown - verts[frame]).max() < 1e-5
    mesh = trimesh.load(path, force="mesh", process=False)
    assert mesh.vertices.shape == (anny.num_vertices, 3) and len(mesh.faces) == anny.faces.shape[0]

    files = export.write_ply_sequence(tmp_path / "seq", anny, track)
    assert [f.name for f in files] == ["frame_00000.ply", "frame_00001.ply", "frame_00002.ply"]
    ply = trimesh.load(files[2], process=False)
    assert np.abs(np.asarray(ply.vertices) - verts[2]).max() < 1e-6
    assert np.array_equal(np.asarray(ply.faces), anny.faces.numpy())


# ---------------------------------------------------------------------------------------------- face crops
def test_face_crops_follow_the_tracked_face_and_are_stable(anny):
    frames_n = 12
    track = synthetic_track(anny, frames=frames_n, size=(360, 480))
    g = torch.Generator().manual_seed(5)
    jitter = torch.randn(frames_n, 3, generator=g) * torch.tensor([0.01, 0.0, 0.01])
    track = track.replace(global_orient=torch.zeros(frames_n, 3), pose=torch.zeros_like(track.pose),
                          translation=jitter)
    points = facecrop.tracked_landmarks_2d(anny, track)
    face = points[:, 75:]
    # paint the face region white on black frames, at half resolution (boxes must be rescaled)
    frames = np.zeros((frames_n, 180, 240, 3), np.uint8)
    for f in range(frames_n):
        x0, y0 = (face[f].min(0).values / 2).int().tolist()
        x1, y1 = (face[f].max(0).values / 2).int().tolist()
        frames[f, y0:y1, x0:x1] = 255
    crops, boxes = facecrop.face_crops(frames, track, anny, size=128, smoothing=2.0)
    assert crops.shape == (frames_n, 128, 128, 3) and crops.dtype == np.uint8
    assert crops[:, 40:90, 40:90].mean() > 240, "the centre of every crop must be the face"
    assert crops.mean() < 230, "the box must include margin around the face (Wan's 1.3 scale)"
    raw, _ = facecrop.face_crops(frames, track, anny, size=128, smoothing=0.0)
    raw_boxes = facecrop.wan_face_boxes(torch.from_numpy(np.stack(
        [face[f].numpy() / 2 for f in range(frames_n)])), 1.3)
    centres = lambda b: (np.asarray(b)[:, :2] + np.asarray(b)[:, 2:]) / 2  # noqa: E731
    assert np.diff(centres(boxes), axis=0).std() < 0.7 * np.diff(centres(raw_boxes), axis=0).std()
    with pytest.raises(InputError, match="frames"):
        facecrop.face_crops(frames[:3], track, anny)


def test_face_crops_of_a_real_clip_are_centred_on_the_face(anny, carphone_path):
    """On real frames (carphone, its own detections) the detector finds the face again in every crop, centred and
    filling most of it, as Wan-Animate's face_video expects."""
    from emosh.track.detect import FACE, Detector, detect_frames, stack_detections
    from emosh.video import read_frames

    frames = read_frames(carphone_path, max_frames=6)
    landmarks, confidence = stack_detections(detect_frames(frames))
    track = synthetic_track(anny, frames=6, size=frames.shape[1:3], landmarks2d=torch.from_numpy(landmarks).float(),
                            confidence=torch.from_numpy(confidence).float())
    crops, _ = facecrop.face_crops(frames, track, anny, size=128, smoothing=0.0)
    with Detector(static_image=True) as detector:
        for i, crop in enumerate(crops):
            det = detector(crop)
            face = det.landmarks[FACE][det.confidence[FACE] > 0]
            assert len(face) > 100, f"no face found in crop {i}"
            assert np.abs(face.mean(0) - 64).max() < 10, f"crop {i}: face centre {face.mean(0)}"
            width = np.ptp(face[:, 0])
            assert 0.75 * 128 < width < 0.95 * 128, f"crop {i}: face {width:.0f} px wide in 128 (Wan: 1.3 x the face)"


def test_face_crops_use_the_detected_face_where_there_is_one(anny):
    frames_n = 4
    track = synthetic_track(anny, frames=frames_n, size=(360, 480))
    track = track.replace(global_orient=torch.zeros(frames_n, 3), pose=torch.zeros_like(track.pose))
    fitted = facecrop.tracked_landmarks_2d(anny, track)
    face = slice(75, None)
    centre = fitted[:, face].mean(1, keepdim=True)
    detected = fitted.clone()
    detected[:, face] = centre + 1.2 * (fitted[:, face] - centre)  # the detector sees a 20 % wider face
    confidence = torch.ones(frames_n, fitted.shape[1])
    confidence[2, face] = 0.0  # no face detected in frame 2
    track = track.replace(landmarks2d=detected, confidence=confidence)
    frames = np.zeros((frames_n, 360, 480, 3), np.uint8)
    _, boxes = facecrop.face_crops(frames, track, anny, size=64, smoothing=0.0)
    _, fitted_boxes = facecrop.face_crops(frames, track.replace(landmarks2d=None), anny, size=64, smoothing=0.0)
    ratio = (boxes[:, 2] - boxes[:, 0]) / (fitted_boxes[:, 2] - fitted_boxes[:, 0])
    assert np.allclose(ratio[[0, 1, 3]], 1.2, atol=0.02) and abs(ratio[2] - 1.0) < 1e-4, ratio
