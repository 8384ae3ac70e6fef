"""``python -m emosh animate`` and the ComfyUI node graph give the same output for the same inputs.

Tracking: both sides feed the one tracker function the same frames and settings. After tracking, the CLI is run
through ``emosh.animate.animate`` (what the ``animate`` command calls) with its tracking stage given ready tracks
and its video writer recording frames before encoding; the graph is Shape Swap / Retarget → Spatial Align → Mesh
Condition Renderer → EMOSH Preview Animate, called as ComfyUI calls them (inference mode, IMAGE tensors, every
widget at its default). The driver's left arm leaves the frame, so the unseen-limb rule is part of what must
agree, and so is the background plate: a stand-in segmenter finds "hair" around the body that the mesh does not
cover.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from emosh import animate as cli
from emosh.generate import preview
from emosh.body import NUM_LANDMARKS, EHMTrack
from emosh.keypoints import BODY_NAMES
from emosh.render.renderer import render_all
from emosh.video import write_image, write_video

from helpers import node_classes, pack_nodes, synthetic_track

HEIGHT, WIDTH = 96, 64
OPTIONS = cli.AnimateOptions(width=WIDTH, height=HEIGHT, batch_size=3, texture_size=256)


class _Recorder:
    """Stands in for ``VideoWriter``: keeps the frames the CLI would encode."""

    videos: dict[str, list[np.ndarray]] = {}

    def __init__(self, path, fps: float) -> None:
        self.frames = _Recorder.videos.setdefault(str(path), [])

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())


@pytest.fixture(scope="module")
def inputs(anny, tmp_path_factory):
    """A reference photo (a render of its own track over a wall, so texture and mask line up), a driving track
    whose left elbow and wrist leave the image after frame 0, and a person segmentation 3 px wider than the mesh."""
    folder = tmp_path_factory.mktemp("cli_graph")
    reference = synthetic_track(anny, 1, size=(HEIGHT, WIDTH), seed=3, turn_std=0.0,
                                confidence=torch.ones(1, NUM_LANDMARKS))
    rendered = render_all(anny, reference, ("hybrid", "mask"))
    person = rendered["mask"][0].reshape(HEIGHT, WIDTH).cpu().numpy() > 0.5
    body = rendered["hybrid"][0].cpu()
    body = body.numpy() if body.dtype == torch.uint8 else (body.clamp(0, 1) * 255).round().byte().numpy()
    x, y = np.meshgrid(np.linspace(40, 200, WIDTH), np.linspace(60, 160, HEIGHT))
    wall = np.stack([x, y, np.full_like(x, 90.0)], -1).astype(np.uint8)  # not plain white: the plate must inpaint
    photo = np.where(person[..., None], body, wall)
    hair = cv2.dilate(person.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32)
    driving = synthetic_track(anny, 8, size=(120, 160), seed=4, landmarks=True, confidence=torch.ones(8, NUM_LANDMARKS))
    arm = [BODY_NAMES.index("left_elbow"), BODY_NAMES.index("left_wrist")]
    landmarks, confidence = driving.landmarks2d.clone(), driving.confidence.clone()
    landmarks[1:, arm], confidence[1:, arm] = -50.0, 0.1
    driving = driving.replace(landmarks2d=landmarks, confidence=confidence)
    write_image(folder / "reference.png", photo)
    write_video(folder / "driving.mp4", np.zeros((8, 32, 32, 3), np.uint8), 25.0)
    return folder, photo, reference, driving, hair


def _cli(inputs, monkeypatch) -> tuple[EHMTrack, np.ndarray, np.ndarray]:
    folder, _, reference, driving, _ = inputs
    monkeypatch.setattr(cli, "track_inputs", lambda *args: (reference, driving))
    monkeypatch.setattr(cli, "VideoWriter", _Recorder)
    _Recorder.videos.clear()
    cli.animate(folder / "reference.png", folder / "driving.mp4", folder / "out.mp4", OPTIONS,
                save_control=folder / "control.mp4", save_track=folder / "tracks")
    recorded = {name: np.stack(_Recorder.videos[str(folder / name)]) for name in ("control.mp4", "out.mp4")}
    return EHMTrack.load(folder / "tracks" / "output.safetensors"), recorded["control.mp4"], recorded["out.mp4"]


def _defaults(cls) -> dict:
    """Every widget of a node at its default value, as a new node in a workflow has them."""
    return {item.id: item.default for item in cls.define_schema().inputs if getattr(item, "default", None) is not None}


def _graph(anny, inputs) -> tuple[EHMTrack, torch.Tensor, torch.Tensor]:
    _, photo, reference, driving, _ = inputs
    nodes = node_classes()
    image = pack_nodes("common").uint8_to_image(photo)

    def call(node_id: str, **given):
        cls = nodes[node_id]
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            return cls.execute(**{**_defaults(cls), **given}).args

    (moved,) = call("EmoshShapeSwapRetarget", body_model=anny, driving_track=driving, reference_track=reference)
    track, background, mask = call("EmoshSpatialAlign", body_model=anny, reference_image=image,
                                   reference_track=reference, track=moved, width=WIDTH, height=HEIGHT)
    hybrid = call("EmoshMeshConditionRenderer", body_model=anny, track=track, batch_size=OPTIONS.batch_size)[0]
    frames, _ = call("EmoshPreviewAnimate", body_model=anny, reference_image=image, reference_track=reference,
                     track=track, background=background, background_mask=mask,
                     texture_size=OPTIONS.texture_size, batch_size=OPTIONS.batch_size)
    return track, hybrid, frames


def test_cli_and_node_graph_give_identical_tracks_and_frames(anny, inputs, monkeypatch):
    hair = inputs[4]
    monkeypatch.setattr(preview, "segment_person", lambda image: hair)  # the person reaches 3 px past the mesh
    cli_track, cli_control, cli_output = _cli(inputs, monkeypatch)
    graph_track, graph_control, graph_output = _graph(anny, inputs)
    driving = inputs[3]
    assert not torch.equal(cli_track.pose, driving.pose), "the unseen left arm took the reference's pose"
    for name, value in cli_track.tensors().items():
        assert torch.equal(value, getattr(graph_track, name)), f"output track field {name} differs"
    assert cli_track.image_size == graph_track.image_size == (HEIGHT, WIDTH)
    to_uint8 = pack_nodes("common").image_to_uint8
    assert cli_control.shape == (8, HEIGHT, WIDTH, 3)
    assert np.array_equal(cli_control, to_uint8(graph_control)), "control frames differ"
    assert np.array_equal(cli_output, to_uint8(graph_output)), "output frames differ"
    assert cli_output.std() > 10, "not an empty frame"


def test_cli_and_tracker_node_track_the_same_frames_with_the_same_settings(anny, astronaut_path, carphone_path,
                                                                          monkeypatch):
    """Tracking is one function (``track_frames``); what could differ is what each side gives it. The CLI's
    tracking stage and the EHM Tracker node (fed as the workflows feed it: Load Image, and the video's frames and
    fps from Get Video Components) must pass the same frames and the same settings."""
    import inspect

    from emosh.track import tracker
    from emosh.video import probe_video, read_frames, read_image

    calls = []
    real = tracker.track_frames

    def record(frames, body_model, **kwargs):
        frames = np.stack(list(frames))
        bound = inspect.signature(real).bind(frames, body_model, **kwargs)
        bound.apply_defaults()
        calls.append({k: v for k, v in bound.arguments.items() if k not in ("progress", "cancel", "meta")})
        return synthetic_track(anny, frames.shape[0], size=frames.shape[1:3], fps=kwargs.get("fps", 25.0))

    monkeypatch.setattr(tracker, "track_frames", record)
    monkeypatch.setattr(pack_nodes("track"), "track_frames", record)  # the node module holds its own reference
    photo = read_image(astronaut_path)
    cli.track_inputs(anny, photo, carphone_path, cli.AnimateOptions(max_frames=3), cli._Stages(None, None))
    node = node_classes()["EmoshTracker"]
    to_image = pack_nodes("common").uint8_to_image
    settings = {k: v for k, v in _defaults(node).items() if k not in ("mode", "fps")}
    with torch.inference_mode():
        node.execute(anny, to_image(photo), "reference image", fps=25.0, **settings)
        node.execute(anny, to_image(read_frames(carphone_path, max_frames=3)), "video",
                     fps=float(probe_video(carphone_path).fps), **settings)
    cli_reference, cli_driving, node_reference, node_driving = calls
    for cli_call, node_call in ((cli_reference, node_reference), (cli_driving, node_driving)):
        assert np.array_equal(cli_call.pop("frames"), node_call.pop("frames"))
        assert cli_call.pop("body_model") is node_call.pop("body_model") is anny
        assert cli_call == node_call
    assert cli_reference["reference"] and not cli_driving["reference"]
