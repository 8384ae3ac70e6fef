"""EHMTrack: bit-exact save/load round trip and every validation error path."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from emosh.body import EHMTrack
from emosh.errors import TrackFormatError

from helpers import synthetic_track


def test_round_trip_is_bit_exact(tmp_path):
    track = synthetic_track(frames=5, size=(768, 512), fps=30.0, landmarks=True, backend_version="0.6.2",
                            meta={"source": "test"})
    path = track.save(tmp_path / "t.safetensors")
    loaded = EHMTrack.load(path)
    for name, value in track.tensors().items():
        assert torch.equal(value, getattr(loaded, name)), name
    assert (loaded.backend, loaded.backend_version, loaded.image_size, loaded.fps, loaded.meta) == \
        ("anny", "0.6.2", (768, 512), 30.0, {"source": "test"})
    assert not list(tmp_path.glob("*.partial"))


def test_round_trip_without_optional_landmarks(tmp_path):
    track = synthetic_track(frames=5)
    loaded = EHMTrack.load(track.save(tmp_path / "t.safetensors"))
    assert loaded.landmarks2d is None


def test_frames_slice_and_step():
    track = synthetic_track(frames=10, fps=30.0)
    part = track.frames(2, 8, 2)
    assert part.num_frames == 3 and part.fps == 15.0
    assert torch.equal(part.pose[1], track.pose[4])


@pytest.mark.parametrize("field,value,message", [
    ("pose", torch.zeros(5, 103), "pose must be"),
    ("global_orient", torch.zeros(4, 3), "global_orient must have shape"),
    ("expression", torch.zeros(5, 52, dtype=torch.float64), "must be torch.float32"),
    ("translation", torch.full((5, 3), float("nan")), "NaN or Inf"),
    ("focal", torch.full((5,), float("inf")), "NaN or Inf"),
    ("focal", torch.zeros(5), "focal must be positive"),
    ("detected", torch.ones(5), "must be torch.bool"),
    ("confidence", torch.zeros(5, 10), "confidence must have shape"),
    ("cam_R", "not a tensor", "must be a torch.Tensor"),
    ("image_size", (0, 10), "image_size must be positive"),
    ("fps", 0.0, "fps must be positive"),
])
def test_validation_errors(field, value, message):
    with pytest.raises(TrackFormatError, match=message):
        synthetic_track(frames=5, **{field: value})


def test_backend_mismatch_is_refused():
    track = synthetic_track(frames=5, landmarks=True)
    track.check_backend("anny")
    with pytest.raises(TrackFormatError, match="smplx_flame"):
        track.check_backend("smplx_flame")


def _write_raw(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_load_rejects_bad_files(tmp_path):
    good = synthetic_track(frames=5, landmarks=True)
    tensors = {k: v.contiguous() for k, v in good.tensors().items()}
    meta = {"format": "emosh.EHMTrack", "format_version": "1", "backend": "anny", "backend_version": "x",
            "image_size": json.dumps([768, 512]), "fps": "30.0", "meta": "{}"}

    with pytest.raises(TrackFormatError, match="not found"):
        EHMTrack.load(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(TrackFormatError, match="not a readable"):
        EHMTrack.load(tmp_path / "garbage.safetensors")
    with pytest.raises(TrackFormatError, match="not an EMOSH track"):
        EHMTrack.load(_write_raw(tmp_path / "other.safetensors", tensors, {"format": "lora"}))
    with pytest.raises(TrackFormatError, match="newer than this EMOSH"):
        EHMTrack.load(_write_raw(tmp_path / "new.safetensors", tensors, {**meta, "format_version": "99"}))
    with pytest.raises(TrackFormatError, match="missing track fields"):
        EHMTrack.load(_write_raw(tmp_path / "partial.safetensors",
                                 {k: v for k, v in tensors.items() if k != "pose"}, meta))
    with pytest.raises(TrackFormatError, match="unknown track fields"):
        EHMTrack.load(_write_raw(tmp_path / "extra.safetensors", {**tensors, "evil": torch.zeros(1)}, meta))
    with pytest.raises(TrackFormatError, match="NaN or Inf"):
        bad = dict(tensors, translation=torch.full_like(tensors["translation"], float("nan")))
        EHMTrack.load(_write_raw(tmp_path / "nan.safetensors", bad, meta))
    with pytest.raises(TrackFormatError, match="invalid track metadata"):
        EHMTrack.load(_write_raw(tmp_path / "meta.safetensors", tensors, {**meta, "image_size": "{"}))
