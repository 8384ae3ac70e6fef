"""Regenerate emosh/body/data/anny_landmarks.npz: the MediaPipe Holistic ⇄ Anny landmark table.

Body and hand landmarks come from Anny bone heads (joint centres) and a few surface points picked geometrically
(ears, heels, toe tips, fingertips). The 478 face-mesh landmarks come from rendering Anny's head (neutral shape,
a few yaw angles and mouth openings), running MediaPipe face_mesh (refined, with irises) on each render and
unprojecting every landmark through the face-id and barycentric buffers onto the mesh. Per landmark the view
whose surface point lies nearest all others (the medoid) is kept. The residual printed at the end is the spread
of the per-view points around it (mm on the mesh) and the reprojection error of the kept point (px).

Run:  PYTHONPATH=. .venv/bin/python scripts/build_correspondence.py [--debug-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from emosh.body import load_body_model
from emosh.body.camera import view_rotation
from emosh.keypoints import BODY_NAMES, HAND_NAMES
from emosh.body.landmarks import DATA_FILE

IMAGE = 512
FOCAL = 1400.0
DISTANCE = 1.0  # metres from the head; the head then spans about 350 px
VIEWS = [  # (yaw degrees, pitch degrees, {facial action: value})
    (0.0, 0.0, {}),
    (-15.0, 0.0, {}),
    (15.0, 0.0, {}),
    (0.0, -8.0, {}),
    (0.0, 0.0, {"jawOpen": 0.25}),
]
SKIN = np.array([205.0, 150.0, 120.0])
FINGERS = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}
# Face-mesh / pose landmarks that the pose model places on the face: pose name -> face-mesh index.
POSE_FROM_FACE = {"nose": 1, "left_eye_inner": 362, "left_eye_outer": 263, "right_eye_inner": 133,
                  "right_eye_outer": 33, "mouth_left": 291, "mouth_right": 61}


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def view_transform(yaw: float, pitch: float, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World→camera (R, t) looking at ``centre`` from the front, the body turned by yaw (about Z) and pitch (X)."""
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rot = view_rotation(2).numpy().astype(np.float64) @ rx @ rz
    t = np.array([0.0, 0.0, DISTANCE]) - rot @ centre
    return rot, t


def project(points: np.ndarray, rot: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = points @ rot.T + t
    return FOCAL * cam[:, :2] / cam[:, 2:3] + IMAGE / 2.0, cam[:, 2]


def barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """2D barycentrics of points p [N,2] in triangles tri [N,3,2]."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    return np.stack([1 - l1 - l2, l1, l2], axis=1)


def render(verts: np.ndarray, faces: np.ndarray, colours: np.ndarray, rot: np.ndarray, t: np.ndarray):
    """Painter's-algorithm face-id buffer (triangles are millimetre-small, so depth sorting is exact enough) and a
    smooth-shaded RGB image interpolated from per-vertex colours. Returns (rgb, face_id, projected vertices)."""
    uv, depth = project(verts, rot, t)
    order = np.argsort(-depth[faces].mean(1))
    face_id = np.full((IMAGE, IMAGE), -1, np.int32)
    pts = np.round((uv[faces] - 0.5) * 16).astype(np.int32)  # cv2 pixel centres sit at integers; 4 bits subpixel
    for f in order:
        cv2.fillPoly(face_id, [pts[f]], int(f), lineType=cv2.LINE_8, shift=4)
    rgb = np.full((IMAGE, IMAGE, 3), 120.0)
    ys, xs = np.nonzero(face_id >= 0)
    fid = face_id[ys, xs]
    bary = np.clip(barycentric(np.stack([xs + 0.5, ys + 0.5], 1), uv[faces[fid]]), 0, 1)
    bary /= bary.sum(1, keepdims=True)
    rgb[ys, xs] = (colours[faces[fid]] * bary[:, :, None]).sum(1)
    return np.clip(rgb, 0, 255).astype(np.uint8), face_id, uv


def vertex_colours(model, verts: np.ndarray, normals: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Skin with Lambert lighting from the camera; eyeballs with sclera, iris and pupil so face_mesh finds irises."""
    light = (normals @ rot.T)[:, 2] * -1.0
    shade = 0.35 + 0.65 * np.clip(light, 0, 1)
    col = SKIN[None] * shade[:, None]
    m = model._model
    dominant = m.vertex_bone_indices.gather(1, m.vertex_bone_weights.argmax(1, keepdim=True))[:, 0].cpu().numpy()
    joints = model.rest().joints[0].cpu().numpy()
    for side in "LR":
        j = model.joint_labels.index(f"eye.{side}")
        sel = dominant == j
        d = verts[sel] - joints[j]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        angle = np.arccos(np.clip(-d[:, 1], -1, 1))  # 0 = straight ahead (-Y)
        eye = np.where(angle[:, None] < 0.17, [25.0, 18.0, 15.0],
                       np.where(angle[:, None] < 0.45, [95.0, 65.0, 40.0], [235.0, 232.0, 228.0]))
        col[sel] = eye * shade[sel, None]
    return col


def detect_face(face_mesh, rgb: np.ndarray) -> np.ndarray | None:
    res = face_mesh.process(rgb)
    if not res.multi_face_landmarks:
        return None
    lm = res.multi_face_landmarks[0].landmark
    return np.array([[p.x * IMAGE, p.y * IMAGE] for p in lm])


def face_table(model, debug_dir: Path | None):
    """Unproject face_mesh landmarks from several renders; returns (face_id [478], bary [478,3], px, mm)."""
    import mediapipe as mp

    faces = model.faces.cpu().numpy()
    zero = model.zero_motion(1)
    shape = model.default_shape()
    neutral = model(shape, **zero).vertices[0].double().cpu().numpy()
    centre = model.rest().joints[0, model.joint_labels.index("eye.L")].cpu().numpy() * np.array([0, 1, 1]) \
        + np.array([0.0, 0.02, 0.0])
    hits = []  # per view: (face ids [478], bary [478,3], detected px [478,2]) with -1 where missed
    per_view_verts, per_view_cam = [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1,
                                         min_detection_confidence=0.3) as face_mesh:
        for vi, (yaw, pitch, actions) in enumerate(VIEWS):
            motion = model.zero_motion(1)
            for name, value in actions.items():
                motion["expression"][0, model.expression_labels.index(name)] = value
            verts = model(shape, **motion).vertices[0].double().cpu().numpy()
            rot, t = view_transform(yaw, pitch, centre)
            rgb, fid_map, uv = render(verts, faces, vertex_colours(model, verts, vertex_normals(verts, faces), rot),
                                      rot, t)
            pts = detect_face(face_mesh, rgb)
            if pts is None:
                print(f"view {vi}: no face found")
                continue
            ix = np.clip(np.floor(pts).astype(int), 0, IMAGE - 1)
            fid = fid_map[ix[:, 1], ix[:, 0]]
            bary = np.zeros((478, 3))
            ok = fid >= 0
            bary[ok] = np.clip(barycentric(pts[ok], uv[faces[fid[ok]]]), 0, None)
            bary[ok] /= bary[ok].sum(1, keepdims=True)
            hits.append((fid, bary, pts))
            per_view_verts.append(verts)
            per_view_cam.append((rot, t))
            print(f"view {vi} yaw {yaw} pitch {pitch} {actions}: {ok.sum()}/478 landmarks on the mesh")
            if debug_dir is not None:
                debug_dir.mkdir(parents=True, exist_ok=True)
                img = np.ascontiguousarray(rgb[:, :, ::-1])
                for p in pts:
                    cv2.circle(img, (int(p[0]), int(p[1])), 1, (0, 255, 0), -1)
                cv2.imwrite(str(debug_dir / f"face_view{vi}.png"), img)
    if not hits:
        raise RuntimeError("face_mesh found no face on any render of Anny")
    face_id = np.zeros(478, np.int64)
    bary_out = np.zeros((478, 3))
    mm, px = [], []
    for k in range(478):
        cands = [(h[0][k], h[1][k]) for h in hits if h[0][k] >= 0]
        if not cands:
            raise RuntimeError(f"face landmark {k} never landed on the mesh")
        points = np.array([(neutral[faces[f]] * b[:, None]).sum(0) for f, b in cands])
        spread = np.linalg.norm(points[:, None] - points[None], axis=2).sum(1)
        best = int(np.argmin(spread))
        face_id[k], bary_out[k] = cands[best]
        mm.extend(np.linalg.norm(points - points[best], axis=1) * 1000.0)
        for (fid, _, pts), verts, (rot, t) in zip(hits, per_view_verts, per_view_cam):
            if fid[k] >= 0:
                p3 = (verts[faces[face_id[k]]] * bary_out[k][:, None]).sum(0)
                px.append(float(np.linalg.norm(project(p3[None], rot, t)[0][0] - pts[k])))
    return face_id, bary_out, float(np.mean(px)), float(np.mean(mm)), float(np.median(px)), float(np.median(mm))


def vertex_as_surface(faces: np.ndarray, vertex: int) -> tuple[int, np.ndarray]:
    """A mesh vertex expressed as (triangle, barycentric)."""
    f = int(np.nonzero((faces == vertex).any(1))[0][0])
    bary = (faces[f] == vertex).astype(np.float64)
    return f, bary


def build(debug_dir: Path | None) -> dict[str, np.ndarray]:
    model = load_body_model("anny", "cpu")
    faces = model.faces.cpu().numpy()
    rest = model.rest()
    verts = rest.vertices[0].double().cpu().numpy()
    joints = rest.joints[0].double().cpu().numpy()
    m = model._model
    dominant = m.vertex_bone_indices.gather(1, m.vertex_bone_weights.argmax(1, keepdim=True))[:, 0].cpu().numpy()
    labels = model.joint_labels
    names: list[str] = []

    def jid(name: str) -> int:
        if name not in names:
            names.append(name)
        return names.index(name)

    n = 553
    joint_a = np.full(n, -1, np.int32)
    joint_b = np.full(n, -1, np.int32)
    joint_w = np.zeros(n, np.float32)
    face_id = np.full(n, -1, np.int64)
    bary = np.zeros((n, 3))

    def set_joint(i: int, a: str, b: str | None = None, w: float = 0.0) -> None:
        joint_a[i], joint_b[i], joint_w[i] = jid(a), jid(b or a), w

    def set_surface(i: int, f: int, bc: np.ndarray) -> None:
        face_id[i], bary[i] = f, bc

    def bone_verts(bones: list[str]) -> np.ndarray:
        return np.nonzero(np.isin(dominant, [labels.index(b) for b in bones]))[0]

    # face (75:553) first: the pose face points reuse it
    f_face, f_bary, res_px, res_mm, med_px, med_mm = face_table(model, debug_dir)
    face_id[75:], bary[75:] = f_face, f_bary
    # which iris (468 or 473) is the person's left eye: the one nearer the left eye's outer corner (263)
    surf = lambda k: (verts[faces[f_face[k]]] * f_bary[k][:, None]).sum(0)  # noqa: E731
    left_iris = 473 if np.linalg.norm(surf(473) - surf(263)) < np.linalg.norm(surf(468) - surf(263)) else 468
    right_iris = 468 if left_iris == 473 else 473
    pose_face = dict(POSE_FROM_FACE, left_eye=left_iris, right_eye=right_iris)

    for i, name in enumerate(BODY_NAMES):
        side = "L" if name.startswith("left") else "R"
        if name in pose_face:
            set_surface(i, int(f_face[pose_face[name]]), f_bary[pose_face[name]])
        elif name.endswith("_ear"):
            head = bone_verts(["head"])
            eye_z = joints[labels.index(f"eye.{side}"), 2]
            band = head[(verts[head, 2] > eye_z - 0.045) & (verts[head, 2] < eye_z - 0.005)]
            sign = 1.0 if side == "L" else -1.0
            set_surface(i, *vertex_as_surface(faces, int(band[np.argmax(sign * verts[band, 0])])))
        elif name.endswith("_heel"):
            foot = bone_verts([f"foot.{side}"])
            low = foot[verts[foot, 2] < joints[labels.index(f"foot.{side}"), 2] - 0.04]
            set_surface(i, *vertex_as_surface(faces, int(low[np.argmax(verts[low, 1] - 0.5 * verts[low, 2])])))
        elif name.endswith("_foot_index"):
            toes = bone_verts([f"toe1-2.{side}", f"toe2-3.{side}"])
            set_surface(i, *vertex_as_surface(faces, int(toes[np.argmin(verts[toes, 1])])))
        else:
            part = name.split("_", 1)[1]
            bones = {"shoulder": ("upperarm01", None, 0.0), "elbow": ("lowerarm01", None, 0.0),
                     "wrist": ("wrist", None, 0.0), "pinky": ("finger5-1", "finger5-2", 0.3),
                     "index": ("finger2-1", "finger2-2", 0.5), "thumb": ("finger1-2", "finger1-3", 0.5),
                     "hip": ("upperleg01", None, 0.0), "knee": ("lowerleg01", None, 0.0),
                     "ankle": ("foot", None, 0.0)}[part]
            set_joint(i, f"{bones[0]}.{side}", f"{bones[1]}.{side}" if bones[1] else None, bones[2])

    for side, start in (("L", 33), ("R", 54)):
        for k, name in enumerate(HAND_NAMES):
            i = start + k
            if name == "wrist":
                set_joint(i, f"wrist.{side}")
                continue
            finger, point = name.split("_")
            digit = FINGERS[finger]
            segment = {"cmc": 1, "mcp": 1 if digit != 1 else 2, "ip": 3, "pip": 2, "dip": 3}.get(point)
            if point == "tip":
                bone = f"finger{digit}-3.{side}"
                tip_verts = bone_verts([bone])
                head = joints[labels.index(bone)]
                parent = joints[labels.index(f"finger{digit}-2.{side}")]
                axis = (head - parent) / np.linalg.norm(head - parent)
                set_surface(i, *vertex_as_surface(faces, int(tip_verts[np.argmax((verts[tip_verts] - head) @ axis)])))
            else:
                set_joint(i, f"finger{digit}-{segment}.{side}")

    is_joint = joint_a >= 0
    assert ((face_id >= 0) != is_joint).all(), "every landmark must be a joint or a surface point"
    print(json.dumps({"face_residual_px_mean": round(res_px, 2), "face_residual_mm_mean": round(res_mm, 2),
                      "face_residual_px_median": round(med_px, 2), "face_residual_mm_median": round(med_mm, 2),
                      "left_iris_centre": left_iris}))
    return dict(joint_names=np.array(names), joint_a=joint_a, joint_b=joint_b, joint_w=joint_w,
                face_id=face_id.astype(np.int32), bary=bary.astype(np.float32),
                residual_px=np.float32(res_px), residual_mm=np.float32(res_mm),
                anny_version=np.array(model.version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_FILE)
    parser.add_argument("--debug-dir", type=Path, default=None, help="write the renders with detected landmarks")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    data = build(args.debug_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
