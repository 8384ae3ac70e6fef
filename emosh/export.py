"""Export a track for Blender / Unreal / Maya: BVH skeleton motion, animated mesh as glTF binary (.glb) or a .ply
sequence.

Both go to the convention those tools expect: Y up, metres (BVH in centimetres by default, as mocap libraries ship
it), the person facing +Z. The BVH hierarchy is the body model's own bone tree; rest offsets come from the track's
body shape, so the skeleton has the reference person's proportions. The .glb stores frame 0 as the mesh and every
other frame as a morph target whose weight is keyed 1 on its frame and 0 elsewhere: with linear interpolation that
plays back the exact per-frame meshes and blends between them, and needs no skinning on the importer's side.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import roma
import torch

from .body.model import BodyModel
from .body.track import EHMTrack
from .errors import InputError
from .paths import atomic_output

CHUNK = 64  # frames per body-model forward


def to_y_up(model: BodyModel) -> torch.Tensor:
    """Rotation [3, 3] from the model's world frame to Y up / facing +Z (Anny: Z up facing -Y; SMPL-X: already)."""
    if model.up_axis == 2:
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    if model.up_axis == 1:
        return torch.eye(3)
    raise InputError(f"unsupported up axis {model.up_axis}")


def posed_meshes(model: BodyModel, track: EHMTrack, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices [T, V, 3] and joints [T, K, 3] of every frame (model world frame, CPU), computed in chunks."""
    track.check_backend(model.backend)
    verts, joints = [], []
    for a in range(0, track.num_frames, chunk):
        part = track.frames(a, min(a + chunk, track.num_frames)).to(model.device)
        with torch.no_grad():
            out = model(part.shape, **part.motion())
        verts.append(out.vertices.cpu())
        joints.append(out.joints.cpu())
    return torch.cat(verts), torch.cat(joints)


# ---------------------------------------------------------------------------------------------- BVH
def bone_world_rotations(model: BodyModel, track: EHMTrack) -> torch.Tensor:
    """World rotation of every bone relative to its zero-pose orientation [T, K, 3, 3], global orientation included.

    The model's own bone kinematics (the call its forward makes) give them: Anny's poses are in each bone's own
    reference frame and come out as posed frame × reference frameᵀ; SMPL-X's rest frames are the world's, so its
    local rotations simply chain. Bone heads then follow parent rotation × zero-pose offset exactly.
    """
    track.check_backend(model.backend)
    t = track.num_frames
    rest = model.rest_skeleton(track.shape.to(model.device))
    out = []
    with torch.no_grad():
        for a in range(0, t, CHUNK):
            part = track.frames(a, a + CHUNK).to(model.device)
            out.append(model.pose_bones(rest, part.pose, part.global_orient, part.translation).rotations.cpu())
    return torch.cat(out)


def _euler_zxy_degrees(rotations: torch.Tensor) -> torch.Tensor:
    """BVH channel angles for ``Zrotation Xrotation Yrotation`` (R = Rz·Rx·Ry, intrinsic) in degrees."""
    return roma.rotmat_to_euler("ZXY", rotations, degrees=True)


def bvh_text(model: BodyModel, track: EHMTrack, unit_scale: float = 100.0) -> str:
    """The BVH file text of ``track`` (``unit_scale`` 100 = centimetres)."""
    if track.num_frames < 1:
        raise InputError("cannot export an empty track")
    c = to_y_up(model)
    rest = (model.rest(track.shape.to(model.device)).joints[0].cpu() @ c.T) * unit_scale
    _, joints = posed_meshes(model, track)
    joints = (joints @ c.T) * unit_scale
    world = c @ bone_world_rotations(model, track) @ c.T
    parents = model.joint_parents
    names = [n.replace(" ", "_") for n in model.joint_labels]
    children: dict[int, list[int]] = {j: [] for j in range(len(parents))}
    for j, p in enumerate(parents):
        if p >= 0:
            children[p].append(j)
    roots = [j for j, p in enumerate(parents) if p < 0]
    if len(roots) != 1:
        raise InputError(f"BVH needs one root bone; the {model.backend} skeleton has {len(roots)}")

    lines = ["HIERARCHY"]
    order: list[int] = []

    def write(j: int, depth: int) -> None:
        pad = "  " * depth
        parent = parents[j]
        offset = torch.zeros(3) if parent < 0 else rest[j] - rest[parent]
        lines.append(f"{pad}{'ROOT' if parent < 0 else 'JOINT'} {names[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        channels = "6 Xposition Yposition Zposition" if parent < 0 else "3"
        lines.append(f"{pad}  CHANNELS {channels} Zrotation Xrotation Yrotation")
        order.append(j)
        for child in children[j]:
            write(child, depth + 1)
        if not children[j]:  # an end site along the bone, a third of its length, so leaves are visible
            tip = offset / 3 if parent >= 0 else torch.tensor([0.0, 0.1 * unit_scale, 0.0])
            lines.append(f"{pad}  End Site")
            lines.append(f"{pad}  {{")
            lines.append(f"{pad}    OFFSET {tip[0]:.6f} {tip[1]:.6f} {tip[2]:.6f}")
            lines.append(f"{pad}  }}")
        lines.append(f"{pad}}}")

    write(roots[0], 0)
    local = world.clone()
    for j, p in enumerate(parents):
        if p >= 0:
            local[:, j] = world[:, p].transpose(-1, -2) @ world[:, j]
    angles = _euler_zxy_degrees(local[:, order])  # [T, K, 3] in Z, X, Y order
    root_pos = joints[:, roots[0]]
    lines += ["MOTION", f"Frames: {track.num_frames}", f"Frame Time: {1.0 / track.fps:.6f}"]
    for f in range(track.num_frames):
        values = [f"{v:.4f}" for v in root_pos[f].tolist()] + [f"{v:.4f}" for v in angles[f].reshape(-1).tolist()]
        lines.append(" ".join(values))
    return "\n".join(lines) + "\n"


def write_bvh(path: str | os.PathLike, model: BodyModel, track: EHMTrack, unit_scale: float = 100.0) -> Path:
    return _atomic_write(Path(path), bvh_text(model, track, unit_scale).encode("ascii"))


# ---------------------------------------------------------------------------------------------- glTF binary
def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def glb_bytes(vertices: np.ndarray, faces: np.ndarray, fps: float, name: str = "emosh") -> bytes:
    """A .glb with one mesh (frame 0), one morph target per later frame and an animation of the target weights.

    ``vertices`` [T, V, 3] float (already Y up, metres), ``faces`` [F, 3] int.
    """
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    t, v = vertices.shape[:2]
    buffer = bytearray()
    views, accessors = [], []

    def add(array: np.ndarray, component: int, kind: str, target: int | None = None, bounds: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        while len(buffer) % 4:
            buffer.append(0)
        view = {"buffer": 0, "byteOffset": len(buffer), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        buffer.extend(data)
        views.append(view)
        acc = {"bufferView": len(views) - 1, "componentType": component, "count": int(array.shape[0]), "type": kind}
        if bounds:
            flat = array.reshape(array.shape[0], -1)
            acc["min"], acc["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    float_, uint = 5126, 5125
    indices = add(np.asarray(faces, dtype=np.uint32).reshape(-1), uint, "SCALAR", target=34963)
    position = add(vertices[0], float_, "VEC3", target=34962, bounds=True)
    targets = [{"POSITION": add(vertices[i] - vertices[0], float_, "VEC3", target=34962, bounds=True)}
               for i in range(1, t)]
    primitive = {"attributes": {"POSITION": position}, "indices": indices, "mode": 4}
    mesh = {"name": name, "primitives": [primitive]}
    gltf: dict = {"asset": {"version": "2.0", "generator": "EMOSH emosh.export"}, "scene": 0,
                  "scenes": [{"nodes": [0]}], "nodes": [{"name": name, "mesh": 0}], "meshes": [mesh]}
    if targets:
        primitive["targets"] = targets
        mesh["weights"] = [0.0] * len(targets)
        mesh["extras"] = {"targetNames": [f"frame_{i:05d}" for i in range(1, t)]}
        times = np.arange(t, dtype=np.float32) / np.float32(fps)
        weights = np.zeros((t, t - 1), dtype=np.float32)
        weights[np.arange(1, t), np.arange(t - 1)] = 1.0  # frame i shows target i-1 fully, frame 0 the base mesh
        inp = add(times, float_, "SCALAR", bounds=True)
        out = add(weights.reshape(-1), float_, "SCALAR")
        gltf["animations"] = [{"name": f"{name}_motion",
                               "samplers": [{"input": inp, "output": out, "interpolation": "LINEAR"}],
                               "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}]
    gltf["accessors"], gltf["bufferViews"] = accessors, views
    gltf["buffers"] = [{"byteLength": len(buffer)}]
    json_chunk = _pad4(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = _pad4(bytes(buffer), b"\0")
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total),
                     struct.pack("<I4s", len(json_chunk), b"JSON"), json_chunk,
                     struct.pack("<I4s", len(bin_chunk), b"BIN\0"), bin_chunk])


def write_glb(path: str | os.PathLike, model: BodyModel, track: EHMTrack) -> Path:
    verts, _ = posed_meshes(model, track)
    verts = verts @ to_y_up(model).T
    return _atomic_write(Path(path), glb_bytes(verts.numpy(), model.faces.cpu().numpy(), track.fps))


# ---------------------------------------------------------------------------------------------- PLY sequence
def ply_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Binary little-endian PLY of one mesh."""
    v = np.ascontiguousarray(vertices, dtype="<f4")
    f = np.asarray(faces, dtype="<i4")
    header = (f"ply\nformat binary_little_endian 1.0\ncomment EMOSH emosh.export\nelement vertex {len(v)}\n"
              f"property float x\nproperty float y\nproperty float z\nelement face {len(f)}\n"
              f"property list uchar int vertex_indices\nend_header\n").encode("ascii")
    face_records = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_records["n"], face_records["idx"] = 3, f
    return header + v.tobytes() + face_records.tobytes()


def write_ply_sequence(folder: str | os.PathLike, model: BodyModel, track: EHMTrack) -> list[Path]:
    """``folder/frame_00000.ply`` … one mesh per frame (Y up, metres)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faces = model.faces.cpu().numpy()
    c = to_y_up(model)
    paths = []
    for a in range(0, track.num_frames, CHUNK):
        verts, _ = posed_meshes(model, track.frames(a, min(a + CHUNK, track.num_frames)))
        for i, frame in enumerate((verts @ c.T).numpy()):
            paths.append(_atomic_write(folder / f"frame_{a + i:05d}.ply", ply_bytes(frame, faces)))
    return paths


def _atomic_write(path: Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:  # a cancel or error never leaves half a file
        tmp.write_bytes(data)
    return path
