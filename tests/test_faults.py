"""The fault table (docs/faults.md) as tests: every row feeds a bad input, a hostile file, a cancel or a
concurrent call to the real code and asserts what happens and what the user is told.

Rows are grouped like the table: inputs, files, long work / cancel, determinism, concurrency. A row whose fix
belongs to another module is first written as ``xfail(strict=True, reason="FIX NEEDED: ...")``, so that it turns
into a failure (XPASS) the moment the fix lands and the mark is removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emosh import video
from emosh.body import EHMTrack
from emosh.errors import InputError, MissingModelError, TrackFormatError, UnsafePathError
from emosh.paths import find_model_file, resolve_inside
from test_track_format import make_track  # the one synthetic-track builder of the suite
from test_workflows import pack_nodes  # our nodes package, as a subpackage of the pack (ComfyUI owns 'nodes')


def _frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Small, distinct, compressible frames (a moving gradient with a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for t in range(count):
        base = ((x + 3 * t) % width) * (255 // max(1, width - 1))
        img = np.stack([base, y * (255 // max(1, height - 1)), np.full_like(x, (40 * t) % 256)], -1)
        out.append(np.clip(img + rng.integers(0, 8, img.shape), 0, 255).astype(np.uint8))
    return out


def _state_hash(module: torch.nn.Module, extra: dict[str, torch.Tensor] | None = None) -> str:
    """SHA-256 over every parameter and buffer (and extra tensors): equal hashes = nothing was mutated."""
    digest = hashlib.sha256()
    items = list(module.state_dict().items()) + sorted((extra or {}).items())
    for name, tensor in items:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ========== 1. inputs: files that are not media
class TestBadMediaFiles:
    def test_zero_byte_video(self, tmp_path):
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
        with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
            video.read_frames(path)

    def test_truncated_video(self, tmp_path):
        full = video.write_video(tmp_path / "full.mp4", _frames(20), fps=25)
        data = full.read_bytes()
        cut = tmp_path / "cut.mp4"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match=r"cut\.mp4.*(truncated|not a video)"):
            video.read_frames(cut)

    def test_text_file_named_mp4(self, tmp_path):
        path = tmp_path / "notes.mp4"
        path.write_text("this is a shopping list, not a video\n" * 20)
        with pytest.raises(InputError, match=r"notes\.mp4.*(truncated|not a video)"):
            video.iter_frames(path).__next__()

    def test_missing_file(self, tmp_path):
        with pytest.raises(InputError, match="File not found"):
            video.read_frames(tmp_path / "nope.mp4")

    def test_corrupt_image(self, tmp_path):
        path = tmp_path / "broken.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        with pytest.raises(InputError, match=r"broken\.png.*(unsupported or corrupt)"):
            video.read_image(path)

    def test_one_frame_video(self, tmp_path):
        path = video.write_video(tmp_path / "one.mp4", _frames(1), fps=25)
        frames = video.read_frames(path)
        assert frames.shape == (1, 48, 64, 3)
        assert video.probe_video(path).frames == 1


# ========== 1. inputs: odd images
class TestOddImages:
    def test_grayscale_png_becomes_rgb(self, tmp_path):
        gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
        import cv2

        cv2.imwrite(str(tmp_path / "g.png"), gray)
        img = video.read_image(tmp_path / "g.png")
        assert img.shape == (32, 64, 3) and img.dtype == np.uint8
        assert np.array_equal(img[..., 0], gray) and np.array_equal(img[..., 1], img[..., 2])

    def test_rgba_png_composited_over_white(self, tmp_path):
        import cv2

        bgra = np.zeros((16, 16, 4), np.uint8)
        bgra[..., 2] = 255  # red
        bgra[:8, :, 3] = 255  # top half opaque, bottom half fully transparent
        cv2.imwrite(str(tmp_path / "a.png"), bgra)
        img = video.read_image(tmp_path / "a.png")
        assert img.shape == (16, 16, 3)
        assert (img[:8] == [255, 0, 0]).all() and (img[8:] == 255).all()

    def test_nan_float_image_refused(self):
        img = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
        img[2, 3, 1] = np.nan
        with pytest.raises(InputError, match="NaN or Inf"):
            video.to_rgb(img)

    def test_inf_float_image_refused(self):
        img = np.zeros((8, 8, 3), np.float32)
        img[0, 0, 0] = np.inf
        with pytest.raises(InputError, match="NaN or Inf"):
            video.to_rgb(img)

    def test_wrong_channel_count_refused(self):
        with pytest.raises(InputError, match=r"\[H, W, 1\|3\|4\]"):
            video.to_rgb(np.zeros((8, 8, 5), np.uint8))

    def test_4k_frame_downscaled_for_work(self):
        frame = np.zeros((2160, 3840, 3), np.uint8)
        frame[1000:1160, 1800:2040] = 255  # a bright block in the middle
        small = video.resize_long_side(frame, 512)
        assert small.shape == (288, 512, 3)
        assert small[133:155, 240:272].mean() > 200 and small[:100].max() == 0

    def test_64px_frame_upscaled_for_work(self):
        frame = np.zeros((64, 64, 3), np.uint8)
        assert video.resize_long_side(frame, 256).shape == (256, 256, 3)


# ========== 2. files: tracks
class TestTrackFiles:
    META = {"format": "emosh.EHMTrack", "format_version": "1", "backend": "anny", "backend_version": "0.6",
            "image_size": json.dumps([96, 64]), "fps": "25.0", "meta": "{}"}

    def _write(self, path: Path, changes: dict | None = None, meta: dict | None = None) -> Path:
        tensors = {k: v.contiguous() for k, v in make_track(frames=4).tensors().items()}
        tensors.update(changes or {})
        save_file(tensors, str(path), metadata={**self.META, **(meta or {})})
        return path

    @pytest.mark.parametrize("field,value,message", [
        ("pose", torch.zeros(4, 103), r"pose must be \[T, J, 3\]"),
        ("cam_R", torch.zeros(4, 3, 4), r"cam_R must have shape \[4, 3, 3\]"),
        ("translation", torch.zeros(3, 3), r"translation must have shape \[4, 3\]"),
        ("expression", torch.zeros(4, 52, dtype=torch.float16), "expression must be torch.float32"),
        ("detected", torch.ones(4, dtype=torch.uint8), "detected must be torch.bool"),
        ("global_orient", torch.full((4, 3), float("nan")), "global_orient contains NaN or Inf"),
        ("focal", torch.full((4,), float("inf")), "focal contains NaN or Inf"),
    ])
    def test_bad_tensor_in_file(self, tmp_path, field, value, message):
        path = self._write(tmp_path / "t.safetensors", {field: value})
        with pytest.raises(TrackFormatError, match=message):
            EHMTrack.load(path)

    def test_newer_format_version(self, tmp_path):
        path = self._write(tmp_path / "t.safetensors", meta={"format_version": "7"})
        with pytest.raises(TrackFormatError, match="newer than this EMOSH.*update the EMOSH pack"):
            EHMTrack.load(path)

    def test_track_from_other_backend(self, tmp_path):
        path = self._write(tmp_path / "t.safetensors", meta={"backend": "smplx_flame"})
        track = EHMTrack.load(path)  # the file itself is fine ...
        with pytest.raises(TrackFormatError, match="'smplx_flame' body model but the 'anny'.*re-track"):
            track.check_backend("anny")  # ... but a stage using Anny must refuse it

    def test_pickle_disguised_as_track(self, tmp_path):
        path = tmp_path / "t.safetensors"
        torch.save(make_track(frames=2).tensors(), path)  # a torch pickle with the right name
        with pytest.raises(TrackFormatError, match="not a readable .safetensors track"):
            EHMTrack.load(path)

    @pytest.mark.parametrize("keep", [0, 0.5])
    def test_empty_or_truncated_track_file(self, tmp_path, keep):
        path = make_track(frames=3).save(tmp_path / "t.safetensors")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(TrackFormatError, match=r"t\.safetensors is not a readable \.safetensors track file"):
            EHMTrack.load(path)

    def test_safetensors_that_is_not_a_track(self, tmp_path):
        path = tmp_path / "lora.safetensors"
        save_file({"lora.down": torch.zeros(2, 2)}, str(path), metadata={"format": "pt"})
        with pytest.raises(TrackFormatError, match="not an EMOSH track"):
            EHMTrack.load(path)


# ========== 2. files: weights must be safetensors
class _Boom:
    """Unpickling this runs code: the proof that a loader would execute what a file smuggles in."""

    ran = False

    def __reduce__(self):
        return (_Boom._trigger, ())

    @staticmethod
    def _trigger():
        _Boom.ran = True
        return {}


def _write_pickle(path: Path) -> Path:
    _Boom.ran = False
    with open(path, "wb") as f:
        pickle.dump({"proj.weight": _Boom()}, f)
    return path


class TestWeightFiles:
    def test_adapter_pt_extension_refused(self, tmp_path):
        from emosh.generate.adapter import MotionAdapter

        with pytest.raises(InputError, match="safetensors only"):
            MotionAdapter.load(_write_pickle(tmp_path / "adapter.pt"))
        assert not _Boom.ran

    def test_adapter_pickle_named_safetensors_refused(self, tmp_path):
        from emosh.errors import EmoshError
        from emosh.generate.adapter import MotionAdapter

        try:
            with pytest.raises(EmoshError, match="not a .?safetensors"):
                MotionAdapter.load(_write_pickle(tmp_path / "adapter.safetensors"))
        finally:
            assert not _Boom.ran

    def test_transformer_pt_extension_refused(self, tmp_path):
        from emosh.generate.pipeline import load_transformer

        with pytest.raises(InputError, match="only .safetensors files are loaded"):
            load_transformer(_write_pickle(tmp_path / "wan.pt"))
        assert not _Boom.ran

    def test_transformer_pickle_named_safetensors_refused(self, tmp_path):
        from emosh.errors import EmoshError
        from emosh.generate.pipeline import load_transformer

        try:
            with pytest.raises(EmoshError, match="not a .?safetensors"):
                load_transformer(_write_pickle(tmp_path / "wan.safetensors"))
        finally:
            assert not _Boom.ran


# ========== 2. files: paths and model folders
class TestPathsAndModels:
    @pytest.mark.parametrize("name", ["../secret.txt", "../../etc/passwd", "/etc/passwd", "sub/../../secret.txt"])
    def test_path_escaping_input_folder_refused(self, tmp_path, name):
        root = tmp_path / "input"
        root.mkdir()
        (tmp_path / "secret.txt").write_text("x")
        with pytest.raises(UnsafePathError, match="outside the allowed folders"):
            resolve_inside(name, [root])

    def test_symlink_escaping_input_folder_refused(self, tmp_path):
        root = tmp_path / "input"
        root.mkdir()
        (tmp_path / "secret.txt").write_text("x")
        (root / "innocent.png").symlink_to(tmp_path / "secret.txt")
        with pytest.raises(UnsafePathError, match="outside the allowed folders"):
            resolve_inside("innocent.png", [root])

    def test_path_inside_second_root_allowed(self, tmp_path):
        a, b = tmp_path / "input", tmp_path / "output"
        a.mkdir(), b.mkdir()
        (b / "clip.mp4").write_bytes(b"x")
        assert resolve_inside(b / "clip.mp4", [a, b]) == (b / "clip.mp4").resolve()
        assert resolve_inside("sub/x.png", [a]) == (a / "sub" / "x.png").resolve()

    def test_missing_model_file_names_folder_and_file(self, tmp_path, monkeypatch):
        monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path / "models"))
        with pytest.raises(MissingModelError) as info:
            find_model_file("adapters", ["emosh_adapter.safetensors"])
        message = str(info.value)
        assert "emosh_adapter.safetensors" in message and str(tmp_path / "models" / "adapters") in message
        assert "never downloaded" in message

    def test_missing_body_model_files(self, tmp_path, monkeypatch):
        from emosh.body import load_body_model

        monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path))
        with pytest.raises(MissingModelError, match=r"SMPLX_NEUTRAL\.npz.*" + str(tmp_path / "body")):
            load_body_model("smplx_flame", "cpu")

    def test_missing_adapter_file(self, tmp_path):
        from emosh.generate.adapter import MotionAdapter

        with pytest.raises(MissingModelError, match=r"looked for .*nothing\.safetensors"):
            MotionAdapter.load(tmp_path / "nothing.safetensors")


# ========== 3. cancel: no partial output
class TestCancel:
    @pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
    def test_video_writer_cancel_leaves_nothing(self, tmp_path, exc):
        out = tmp_path / "out"
        target = out / "result.mp4"
        with pytest.raises(exc):
            with video.VideoWriter(target, fps=25) as writer:
                for i, frame in enumerate(_frames(10)):
                    if i == 6:
                        raise exc("cancelled")
                    writer.write(frame)
        assert list(out.iterdir()) == []
        # the next run works and leaves exactly the final file
        video.write_video(target, _frames(5), fps=25)
        assert [p.name for p in out.iterdir()] == ["result.mp4"]
        assert video.read_frames(target).shape[0] == 5

    def test_cancel_keeps_previous_result(self, tmp_path):
        target = video.write_video(tmp_path / "result.mp4", _frames(3), fps=25)
        before = target.read_bytes()

        def frames():
            yield from _frames(4)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            video.write_video(target, frames(), fps=25)
        assert target.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["result.mp4"]

    def test_track_save_cancel_leaves_nothing(self, tmp_path, monkeypatch):
        import emosh.body.track as track_module

        def failing_save(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"half")
            raise KeyboardInterrupt

        monkeypatch.setattr(track_module, "save_file", failing_save)
        with pytest.raises(KeyboardInterrupt):
            make_track(frames=2).save(tmp_path / "t.safetensors")
        assert list(tmp_path.iterdir()) == []

    def test_image_write_failure_leaves_nothing(self, tmp_path):
        with pytest.raises(InputError, match="Cannot write image"):
            video.write_image(tmp_path / "frame.unknownext", np.zeros((4, 4, 3), np.uint8))
        assert list(tmp_path.iterdir()) == []

    def test_empty_video_not_written(self, tmp_path):
        with pytest.raises(InputError, match="No frames were written"):
            video.write_video(tmp_path / "none.mp4", [], fps=25)
        assert list(tmp_path.iterdir()) == []


# ========== 1. inputs: generation tensors
class TestGenerationInputs:
    def test_size_not_multiple_of_stride(self):
        from emosh.generate.chunks import check_video_inputs

        control = torch.rand(5, 40, 72, 3)  # 72 % 16 != 0, 40 % 16 != 0
        with pytest.raises(InputError, match="72x40.*multiples of 16"):
            check_video_inputs(control, control[0])

    def test_control_and_init_lengths_differ(self):
        from emosh.generate.chunks import check_video_inputs

        control = torch.rand(9, 32, 32, 3)
        with pytest.raises(InputError, match="Frame count mismatch: init video has 5 frames, control video 9"):
            check_video_inputs(control, control[0], init_video=control[:5])

    @pytest.mark.parametrize("which", ["control", "reference"])
    def test_nan_in_image_tensors(self, which):
        from emosh.generate.chunks import check_video_inputs

        control = torch.rand(5, 32, 32, 3)
        reference = control[0].clone()
        if which == "control":
            control[2, 3, 3, 1] = float("nan")
        else:
            reference[3, 3, 1] = float("inf")
        with pytest.raises(InputError, match="NaN or Inf"):
            check_video_inputs(control, reference)

    def test_one_frame_video_plans_one_latent_frame(self):
        from emosh.generate.chunks import latent_frame_count, pad_video_to_latent_grid, plan_chunks

        assert latent_frame_count(1) == 1
        assert pad_video_to_latent_grid(torch.rand(1, 16, 16, 3)).shape[0] == 1
        chunks = plan_chunks(1, 21, 2)
        assert len(chunks) == 1 and torch.equal(chunks[0].weights, torch.ones(1))
        with pytest.raises(InputError, match="at least one frame"):
            latent_frame_count(0)


# ========== 4./5. determinism and concurrency (body)
def _motion(anny, frames: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    motion = anny.zero_motion(frames)
    motion["pose"] = 0.3 * torch.randn(motion["pose"].shape, generator=g)
    motion["expression"] = torch.rand(motion["expression"].shape, generator=g)
    motion["global_orient"] = 0.5 * torch.randn(frames, 3, generator=g)
    return motion


def _body_state(anny) -> str:
    extra = {name: getattr(anny, name) for name in ("faces", "uvs", "face_uvs", "part_labels")}
    return _state_hash(anny._model, extra)


def _run_concurrently(calls: list) -> list:
    """Run each call in its own thread, all released at once; return their results in order (re-raise errors)."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return [results[i] for i in range(len(calls))]


class TestBodyDeterminismAndThreads:
    def test_same_inputs_identical_outputs(self, anny):
        motion = _motion(anny, 3, seed=1)
        shape = torch.full((6,), 0.4)
        a = anny(shape, **motion)
        b = anny(shape, **motion)
        assert torch.equal(a.vertices, b.vertices) and torch.equal(a.joints, b.joints)

    def test_parallel_calls_match_sequential_and_do_not_mutate_cache(self, anny):
        from emosh.body import load_body_model

        before = _body_state(anny)
        jobs = [(torch.full((6,), 0.3), _motion(anny, 9, seed=2)), (torch.full((6,), 0.7), _motion(anny, 9, seed=3))]
        sequential = [anny(shape, **motion).vertices for shape, motion in jobs]
        results = _run_concurrently([lambda job=job: anny(job[0], **job[1]).vertices for job in jobs])
        for i, expected in enumerate(sequential):
            assert torch.equal(results[i], expected), f"thread {i} differs from the sequential call"
        assert _body_state(anny) == before, "a forward call mutated the cached body model"
        assert load_body_model("anny", "cpu") is anny


# ========== 1. inputs: what the detector sees
@pytest.fixture(scope="module")
def photo_detector():
    from emosh.track.detect import Detector, holistic_available

    if not holistic_available():
        pytest.skip("mediapipe holistic is not installed")
    with Detector(static_image=True) as detector:
        yield detector


@pytest.fixture(scope="module")
def astronaut(astronaut_path) -> np.ndarray:
    return video.read_image(astronaut_path)


def _chelsea_cat() -> np.ndarray:
    """scikit-image's photo of a cat: a real picture with no person in it."""
    import skimage

    return video.read_image(Path(skimage.__file__).parent / "data" / "chelsea.png")


class TestDetectorInputs:
    def test_image_with_no_person(self, photo_detector):
        det = photo_detector(_chelsea_cat())
        assert not det.found and det.num_people == 0
        assert not det.confidence.any() and not det.landmarks.any()

    def test_two_people_tracks_the_largest_with_a_warning(self, photo_detector, astronaut):
        from emosh.track.detect import MultiplePeopleWarning

        small = video.resize_long_side(astronaut, 256)
        pair = np.full((512, 768, 3), 255, np.uint8)
        pair[:, :512] = astronaut
        pair[256:, 512:] = small
        with pytest.warns(MultiplePeopleWarning, match="2 people are visible; tracking only the largest"):
            det = photo_detector(pair)
        assert det.num_people == 2
        seen = det.confidence > 0.5
        assert seen.sum() > 100 and (det.landmarks[seen, 0] < 512).all(), "landmarks must be on the large person"

    @pytest.mark.parametrize("size", [64, 3840])
    def test_tiny_and_4k_frames_map_back_to_input_pixels(self, photo_detector, astronaut, size):
        import cv2

        base = photo_detector(astronaut)
        frame = cv2.resize(astronaut, (size, size), interpolation=cv2.INTER_AREA if size < 512 else cv2.INTER_LINEAR)
        det = photo_detector(frame)
        assert det.part_found("body") and det.part_found("face")
        nose_base, nose = base.landmarks[0] * (size / 512), det.landmarks[0]
        assert np.abs(nose - nose_base).max() < 0.05 * size, (nose, nose_base)

    @pytest.mark.parametrize("kind", ["gray2d", "rgba", "float01"])
    def test_gray_rgba_float_frames_accepted(self, photo_detector, astronaut, kind):
        import cv2

        if kind == "gray2d":
            frame = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
        elif kind == "rgba":
            frame = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], -1)
        else:
            frame = astronaut.astype(np.float32) / 255.0
        det = photo_detector(frame)
        assert det.part_found("body") and det.part_found("face")

    def test_nan_frame_refused(self, photo_detector):
        frame = np.full((64, 64, 3), 0.5, np.float32)
        frame[5, 5] = np.nan
        with pytest.raises(InputError, match="NaN or Inf"):
            photo_detector(frame)


# ========== 3./4./5. renderer: streaming, determinism, threads
def standing_track(model, frames: int, size: tuple[int, int] = (96, 64), seed: int = 0) -> EHMTrack:
    """A person facing the camera, waving the arms a little: a real, visible render target."""
    from emosh.body.camera import default_focal, view_rotation

    g = torch.Generator().manual_seed(seed)
    motion = model.zero_motion(frames)
    motion["pose"] = 0.15 * torch.randn(motion["pose"].shape, generator=g)
    return EHMTrack(
        backend=model.backend, backend_version=model.version, shape=model.default_shape().cpu(),
        focal=torch.full((frames,), default_focal(size)), cam_R=view_rotation(model.up_axis).repeat(frames, 1, 1),
        cam_t=torch.tensor([0.0, 0.0, 3.2]).repeat(frames, 1),
        confidence=torch.ones(frames, 553), detected=torch.ones(frames, dtype=torch.bool),
        image_size=size, fps=25.0, **{k: v.cpu() for k, v in motion.items()})


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """A rendered frame (uint8, or float in 0..1) as the uint8 array a video writer takes."""
    if frame.dtype == torch.uint8:
        return frame.cpu().numpy()
    return (frame.clamp(0, 1) * 255).round().byte().cpu().numpy()


class _CountingForward:
    """Records the batch size of every body-model call (the renderer must never pose the whole video at once)."""

    def __init__(self, model) -> None:
        self.model, self.forward, self.batches = model, model.forward, []

    def __call__(self, shape, pose, *args, **kwargs):
        self.batches.append(int(pose.shape[0]))
        return self.forward(shape, pose, *args, **kwargs)


class TestRendererStreaming:
    def test_forty_frames_stream_in_bounded_batches(self, anny, tmp_path, monkeypatch):
        from emosh.render.renderer import render_track

        track = standing_track(anny, 40)
        counter = _CountingForward(anny)
        monkeypatch.setattr(anny, "forward", counter)
        batches = render_track(anny, track, ("hybrid",), batch_size=8)
        assert counter.batches == [], "render_track must be lazy: nothing runs before the first frame is asked for"
        with video.VideoWriter(tmp_path / "control.mp4", fps=track.fps) as writer:
            for i, batch in enumerate(batches):
                # one batch posed per batch consumed (plus at most one 1-frame rest pose for the colours)
                assert sum(counter.batches) - 8 * (i + 1) in (0, 1) and max(counter.batches) == 8
                assert batch.start == 8 * i and batch.frames["hybrid"].shape == (8, 96, 64, 3)
                for frame in batch.frames["hybrid"]:
                    writer.write(_to_uint8(frame))
                assert writer.frames == 8 * (i + 1), "frames are written as they are rendered"
        assert max(counter.batches) == 8 and sum(counter.batches) - 40 in (0, 1)
        assert video.read_frames(tmp_path / "control.mp4").shape == (40, 96, 64, 3)

    def test_cancel_mid_render_leaves_no_file_and_next_run_works(self, anny, tmp_path):
        from emosh.render.renderer import render_track

        track = standing_track(anny, 12)
        target = tmp_path / "control.mp4"

        def write(cancel_at: int | None) -> None:
            with video.VideoWriter(target, fps=track.fps) as writer:
                for batch in render_track(anny, track, ("keypoints",), batch_size=4):
                    if batch.start == cancel_at:
                        raise KeyboardInterrupt  # what Ctrl-C / a ComfyUI interrupt does between batches
                    for frame in batch.frames["keypoints"]:
                        writer.write(_to_uint8(frame))

        with pytest.raises(KeyboardInterrupt):
            write(cancel_at=8)
        assert list(tmp_path.iterdir()) == []
        write(cancel_at=None)
        assert [p.name for p in tmp_path.iterdir()] == ["control.mp4"]
        assert video.read_frames(target).shape[0] == 12

    def test_track_from_other_backend_refused(self, anny):
        from emosh.render.renderer import render_track

        track = standing_track(anny, 2).replace(backend="smplx_flame")
        with pytest.raises(TrackFormatError, match="re-track"):
            next(render_track(anny, track))

    @pytest.mark.parametrize("size", [(47, 61), (1, 1)])
    def test_odd_output_sizes(self, anny, size):
        from emosh.render.renderer import render_all

        out = render_all(anny, standing_track(anny, 2), ("hybrid", "mask"), height=size[0], width=size[1])
        assert out["hybrid"].shape == (2, *size, 3) and out["mask"].shape[:3] == (2, *size)
        assert torch.isfinite(out["mask"]).all()
        if size[0] > 8:
            assert out["mask"].mean() > 0.02, "the person must still be visible"

    def test_same_track_renders_identically_twice(self, anny):
        from emosh.render.renderer import render_all

        track = standing_track(anny, 3, seed=4)
        a = render_all(anny, track, ("hybrid", "keypoints", "depth"))
        b = render_all(anny, track, ("hybrid", "keypoints", "depth"))
        for mode in a:
            assert torch.equal(a[mode], b[mode]), mode
        assert _to_uint8(a["hybrid"]).std() > 10, "not an empty frame"

    def test_parallel_renders_match_sequential_and_keep_model_intact(self, anny):
        from emosh.render.renderer import render_all

        tracks = [standing_track(anny, 4, seed=5), standing_track(anny, 4, seed=6)]
        before = _body_state(anny)
        sequential = [render_all(anny, t, ("hybrid", "keypoints"))["hybrid"] for t in tracks]
        results = _run_concurrently([lambda t=t: render_all(anny, t, ("hybrid", "keypoints"))["hybrid"]
                                     for t in tracks])
        assert not torch.equal(sequential[0], sequential[1])
        for i in range(2):
            assert torch.equal(results[i], sequential[i]), f"thread {i} differs from the sequential render"
        assert _body_state(anny) == before


# ========== more rows on model files and lengths
def test_missing_mediapipe_task_file_names_folder_file_and_source(tmp_path, monkeypatch):
    from emosh.track.detect import TASK_FILES, find_task_file

    monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path))
    with pytest.raises(MissingModelError) as info:
        find_task_file("pose")
    message = str(info.value)
    assert TASK_FILES["pose"] in message and str(tmp_path / "mediapipe") in message
    assert "https://" in message, "the message says where the official file comes from"


def test_control_shorter_than_generated_video_refused():
    from emosh.generate.adapter import add_motion_tokens

    tokens = torch.zeros(1, 8, 5, 2, 2)  # DiT tokens for 5 latent frames
    motion = torch.ones(1, 8, 3, 2, 2)  # control video gave only 3 latent frames
    with pytest.raises(InputError, match="Frame count mismatch.*control video must have as many frames"):
        add_motion_tokens(tokens, motion, first_frame=0, factor=1.0)


# ========== 1./4./5. tracker: gaps, no person, determinism, threads
FAST_FIT = dict(window=8, iterations=4, first_window_iterations=12)  # few iterations: behaviour, not accuracy


@pytest.fixture(scope="module")
def gap_detections(carphone_path):
    """Real detections of 8 carphone frames where the person is gone (empty frame) in frames 0 and 4-5."""
    from emosh.track.detect import Detector, holistic_available

    if not holistic_available():
        pytest.skip("mediapipe holistic is not installed")
    frames = list(video.iter_frames(carphone_path, max_frames=8))
    empty = np.full_like(frames[0], 128)
    frames[0] = frames[4] = frames[5] = empty
    with Detector() as detector:
        return [detector(f) for f in frames], frames[1].shape[:2]


def _fit(anny, detections, image_size) -> EHMTrack:
    from emosh.track.tracker import WindowedTracker

    tracker = WindowedTracker(anny, image_size, fps=25.0, **FAST_FIT)
    for det in detections:
        tracker.push(det)
    return tracker.finish()


@pytest.fixture(scope="module")
def gap_tracks(anny, gap_detections):
    """The same detections fitted twice, one after the other."""
    return [_fit(anny, *gap_detections) for _ in range(2)]


class TestTracker:
    def test_person_leaves_and_comes_back(self, gap_tracks):
        track = gap_tracks[0]
        assert track.detected.tolist() == [False, True, True, True, False, False, True, True]
        assert not track.confidence[[0, 4, 5]].any()
        # gap frames are filled from their neighbours (not reset to a rest pose): within the neighbours' range up to
        # the light temporal smoothing (0.02 rad / m / action units); the leading gap follows the first detection
        for field in ("global_orient", "translation", "expression"):
            values = getattr(track, field)
            lo, hi = torch.minimum(values[3], values[6]) - 0.02, torch.maximum(values[3], values[6]) + 0.02
            for t in (4, 5):
                assert ((values[t] >= lo) & (values[t] <= hi)).all(), (field, t, values[3:7])
            assert torch.allclose(values[0], values[1], atol=0.02), field

    def test_same_detections_give_identical_tracks(self, gap_tracks):
        first, second = gap_tracks
        for name, value in first.tensors().items():
            assert torch.equal(value, getattr(second, name)), name

    def test_parallel_fits_match_sequential_and_keep_model_intact(self, anny, gap_detections, gap_tracks):
        before = _body_state(anny)
        detections, size = gap_detections
        other = list(reversed(detections))
        expected = [gap_tracks[0], _fit(anny, other, size)]
        results = _run_concurrently([lambda d=d: _fit(anny, d, size) for d in (detections, other)])
        for i in range(2):
            for name, value in expected[i].tensors().items():
                assert torch.equal(value, getattr(results[i], name)), f"thread {i}: {name} differs"
        assert _body_state(anny) == before

    def test_one_frame_video(self, anny, gap_detections):
        detections, size = gap_detections
        track = _fit(anny, detections[1:2], size)
        assert track.num_frames == 1 and bool(track.detected[0])

    def test_video_with_no_person(self, anny):
        from emosh.errors import NoPersonError
        from emosh.track.tracker import track_frames

        empty = [np.full((96, 128, 3), v, np.uint8) for v in (90, 100, 110)]
        with pytest.raises(NoPersonError, match="No person was detected in any of the 3 frames.*clearly visible"):
            track_frames(empty, anny, window=8, iterations=4)

    def test_photo_with_no_person(self, anny):
        from emosh.errors import NoPersonError
        from emosh.track.tracker import track_frames

        with pytest.raises(NoPersonError, match="No person was detected"):
            track_frames([_chelsea_cat()], anny, reference=True, iterations=4)


# ========== ComfyUI node glue: file names and IMAGE tensors
class TestNodeGlue:
    @pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.safetensors"])
    def test_workflow_file_name_outside_input_refused(self, tmp_path, monkeypatch, name):
        safe_path = pack_nodes("common").safe_path

        monkeypatch.chdir(tmp_path)  # outside ComfyUI the folders are ./input and ./output
        with pytest.raises(UnsafePathError, match="outside the allowed folders"):
            safe_path(name, "input")

    @pytest.mark.parametrize("prefix", ["../escaped", "/tmp/escaped", "a/../../escaped"])
    def test_output_prefix_outside_output_refused(self, tmp_path, monkeypatch, prefix):
        output_stem = pack_nodes("common").output_stem

        monkeypatch.chdir(tmp_path)
        with pytest.raises(UnsafePathError, match="outside the allowed folders"):
            output_stem(prefix)
        assert not any(p.name.startswith("escaped") for p in tmp_path.rglob("*"))

    def test_output_prefix_with_subfolder_stays_inside(self, tmp_path, monkeypatch):
        output_stem = pack_nodes("common").output_stem

        monkeypatch.chdir(tmp_path)
        stem = output_stem("emosh/clip")
        assert stem == (tmp_path / "output" / "emosh" / "clip_00001").resolve()
        stem.with_suffix(".mp4").write_bytes(b"x")
        assert output_stem("emosh/clip").name == "clip_00002"

    @pytest.mark.parametrize("shape", [(64, 64, 3), (1, 64, 64, 2), (0, 64, 64, 3)])
    def test_malformed_image_tensor_refused(self, shape):
        image_to_uint8 = pack_nodes("common").image_to_uint8

        with pytest.raises(InputError, match="IMAGE|empty image batch"):
            image_to_uint8(torch.zeros(shape))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_nan_inf_image_tensor_refused(self, bad):
        image_to_uint8 = pack_nodes("common").image_to_uint8

        images = torch.rand(2, 16, 16, 3)
        images[1, 4, 4, 0] = bad
        with pytest.raises(InputError, match="NaN or Inf"):
            image_to_uint8(images)


# ========== preview animator
@pytest.fixture(scope="module")
def preview_animator(anny):
    """An animator whose reference photo is a render of the reference track (so the texture really lines up)."""
    from emosh.generate.preview import PreviewAnimator
    from emosh.render.renderer import render_all

    reference = standing_track(anny, 1, size=(96, 64), seed=9)
    photo = _to_uint8(render_all(anny, reference, ("hybrid",))["hybrid"][0])
    background = np.full((96, 64, 3), 200, np.uint8)
    return PreviewAnimator(anny, photo, reference, background, texture_size=128)


class TestPreview:
    def test_same_inputs_identical_frames(self, anny, preview_animator):
        track = standing_track(anny, 3, seed=10)
        a, alpha_a = preview_animator.render(track)
        b, alpha_b = preview_animator.render(track)
        assert torch.equal(a, b) and torch.equal(alpha_a, alpha_b)
        assert alpha_a.mean() > 0.02 and (a - 200 / 255).abs().amax() > 0.2, "the person is drawn"

    def test_track_of_another_size_refused(self, anny, preview_animator):
        with pytest.raises(InputError, match=r"Track frames are \(48, 32\), the background is \(96, 64\)"):
            preview_animator.render(standing_track(anny, 1, size=(48, 32)))

    def test_reference_track_for_another_photo_refused(self, anny):
        from emosh.generate.preview import PreviewAnimator

        reference = standing_track(anny, 1, size=(96, 64))
        with pytest.raises(InputError, match=r"Reference track is for a \(96, 64\) image, the photo is \(80, 64\)"):
            PreviewAnimator(anny, np.zeros((80, 64, 3), np.uint8), reference, np.zeros((96, 64, 3), np.uint8))


# ========== retarget and align
class TestRetargetAlign:
    def test_long_driving_short_reference(self, anny):
        from emosh.retarget import retarget

        driving = standing_track(anny, 40, seed=11)
        reference = standing_track(anny, 1, seed=12).replace(shape=torch.full((6,), 0.8))
        before = {k: v.clone() for k, v in driving.tensors().items()}
        out = retarget(anny, driving, reference)
        assert out.num_frames == 40 and torch.equal(out.shape, reference.shape)
        for name, value in before.items():
            assert torch.equal(value, getattr(driving, name)), f"retarget changed the driving track's {name}"

    def test_track_from_other_backend_refused(self, anny):
        from emosh.retarget import retarget

        good = standing_track(anny, 2)
        with pytest.raises(TrackFormatError, match="'smplx_flame' body model.*re-track"):
            retarget(anny, good, good.replace(backend="smplx_flame"))

    def test_reference_photo_of_another_size_refused(self, anny):
        from emosh.align import spatial_align

        reference = standing_track(anny, 1, size=(96, 64))
        with pytest.raises(InputError, match="reference image is 80x96 but its track was made on 64x96 images"):
            spatial_align(anny, np.zeros((96, 80, 3), np.uint8), reference, standing_track(anny, 2), 64, 96)

    def test_align_to_size_not_multiple_of_16(self, anny):
        from emosh.align import spatial_align

        reference = standing_track(anny, 1, size=(96, 64))
        photo = np.full((96, 64, 3), 200, np.uint8)
        result = spatial_align(anny, photo, reference, standing_track(anny, 3), width=50, height=70)
        assert result.track.image_size == (70, 50) and result.reference_image.shape == (70, 50, 3)
        assert result.reference_mask.shape == (70, 50) and result.reference_mask.mean() > 0.02


# ========== the main job: Ctrl-C in the CLI, then the next run
def test_ctrl_c_in_cli_leaves_no_partial_output_and_next_run_works(astronaut_path, carphone_path, tmp_path,
                                                                    monkeypatch, capsys):
    from emosh.cli import main

    out_dir = tmp_path / "out"
    argv = ["animate", "--reference", str(astronaut_path), "--driving", str(carphone_path),
            "--out", str(out_dir / "result.mp4"), "--save-control", str(out_dir / "control.mp4"),
            "--max-frames", "6", "--size", "128", "--batch-size", "2"]
    real_write = video.VideoWriter.write
    written: list[int] = []

    def write_then_ctrl_c(self, frame):
        if len(written) == 5:  # Ctrl-C arrives after five frame writes (output and control, frame by frame)
            assert not (out_dir / "result.mp4").exists(), "the real name appears only when the video is complete"
            raise KeyboardInterrupt
        written.append(1)
        real_write(self, frame)

    monkeypatch.setattr(video.VideoWriter, "write", write_then_ctrl_c)
    assert main(argv) == 130
    assert "interrupted: no partial output was kept" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == [], "no partial or final file may remain after a cancel"

    monkeypatch.setattr(video.VideoWriter, "write", real_write)
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 6
    assert sorted(p.name for p in out_dir.iterdir()) == ["control.mp4", "result.mp4"]
    assert video.read_frames(out_dir / "result.mp4").shape[0] == 6


def test_missing_diffusion_model_names_every_folder(astronaut_path, carphone_path, tmp_path, monkeypatch):
    from emosh.animate import AnimateOptions, animate

    monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(MissingModelError) as info:
        animate(astronaut_path, carphone_path, tmp_path / "out" / "x.mp4", AnimateOptions(model="wan2.1_t2v_1.3B"))
    message = str(info.value)
    assert str(tmp_path / "models" / "wan2.1_t2v_1.3B") in message and "never downloads" in message
    assert not (tmp_path / "out").exists(), "nothing is written when the run cannot start"


@pytest.mark.parametrize("which", ["reference", "driving"])
def test_main_job_refuses_unusable_inputs_before_any_work(astronaut_path, carphone_path, tmp_path, which):
    from emosh.animate import animate

    bad = tmp_path / ("photo.png" if which == "reference" else "clip.mp4")
    bad.write_bytes(b"")
    reference, driving = (bad, carphone_path) if which == "reference" else (astronaut_path, bad)
    with pytest.raises(InputError, match=r"(photo\.png|clip\.mp4)"):
        animate(reference, driving, tmp_path / "out" / "x.mp4")
    assert not (tmp_path / "out").exists()


def test_batched_calls_from_two_threads_in_a_fresh_process():
    """Batched body-model calls from two threads (ComfyUI requests; the CPU skinning pool splits each batch over
    threads too) crashed inside warp ("'Adjoint' object has no attribute 'tid_extent_limit_candidate'") because anny
    built a new kernel object per call; it stopped two 1,000-frame runs mid-way."""
    import subprocess
    import sys

    script = (  # a tiny thread switch interval makes the interleavings of a long, loaded run happen at once
        "import sys, threading, torch\n"
        "sys.setswitchinterval(1e-6)\n"
        "from emosh.body import load_body_model\n"
        "m = load_body_model('anny', 'cpu')\n"
        "motion = m.zero_motion(16)\n"
        "errors = []\n"
        "barrier = threading.Barrier(2)\n"
        "def run():\n"
        "    try:\n"
        "        barrier.wait()\n"
        "        for _ in range(30):\n"
        "            m(m.default_shape(), **motion)\n"
        "    except BaseException as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=run) for _ in range(2)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print('ERRORS', errors)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERRORS []" in proc.stdout, proc.stdout[-2000:]
