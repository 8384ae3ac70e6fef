"""EMOSH generation on tiny random-weight diffusers Wan models (no downloads, no ComfyUI)."""
from __future__ import annotations

import sys

import pytest
import torch

from emosh.errors import InputError, MissingModelError
from emosh.generate.adapter import InjectionSchedule, MotionAdapter, inject_motion, step_progress
from emosh.generate.chunks import (ChunkAssembler, ChunkConditioning, check_video_inputs, plan_chunks,
                                   run_model_on_chunk)

from helpers import REPO, TEXT_DIM, moving_video, pack_nodes, random_adapter, tiny_transformer, tiny_vae

def tiny_pipeline(adapter: MotionAdapter | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from emosh.generate.pipeline import EmoshPipeline

    return EmoshPipeline(tiny_transformer(), tiny_vae(), FlowMatchEulerDiscreteScheduler(shift=3.0),
                         adapter or random_adapter())


# ---------------------------------------------------------------- adapter


def test_zero_adapter_leaves_transformer_output_bit_identical():
    transformer = tiny_transformer()
    x = torch.randn(1, 16, 3, 8, 8)
    text = torch.randn(1, 6, TEXT_DIM)
    t = torch.tensor([500.0])
    motion = torch.randn(1, 16, 3, 8, 8)

    def forward(inp, _frame_mask=None):
        return transformer(inp, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    with torch.no_grad():
        base = forward(x)
        out = run_model_on_chunk(forward, x, 16, transformer.patch_embedding, None, MotionAdapter(32), motion, 1.0)
        injected = run_model_on_chunk(forward, x, 16, transformer.patch_embedding, None, random_adapter(), motion,
                                      1.0)
    assert torch.equal(out, base)
    assert (injected - base).abs().max() > 1e-4
    assert torch.equal(forward(x), base), "the hook must be removed after the call"


def test_adapter_changes_only_noisy_tokens():
    transformer = tiny_transformer()
    cond = ChunkConditioning(torch.randn(1, 16, 2, 8, 8), 1, 0, 1)
    noisy = torch.randn(1, 16, 3, 8, 8)
    tokens = {}

    def forward(inp, _frame_mask):
        handle = transformer.patch_embedding.register_forward_hook(lambda _m, _i, out: tokens.__setitem__("t", out))
        try:
            return transformer(inp, timestep=torch.tensor([300.0]), encoder_hidden_states=torch.zeros(1, 4, TEXT_DIM),
                               return_dict=False)[0]
        finally:
            handle.remove()

    with torch.no_grad():
        out = run_model_on_chunk(forward, noisy, 16, transformer.patch_embedding, cond, MotionAdapter(32),
                                 torch.randn(1, 16, 3, 8, 8), 1.0)
        base_tokens = tokens["t"]
        run_model_on_chunk(forward, noisy, 16, transformer.patch_embedding, cond, random_adapter(),
                           torch.randn(1, 16, 3, 8, 8), 1.0)
        new_tokens = tokens["t"]
    assert out.shape == noisy.shape  # conditioning frames are dropped from the prediction
    assert torch.equal(new_tokens[:, :, :2], base_tokens[:, :, :2]), "conditioning tokens must not change"
    changed = (new_tokens[:, :, 2:] - base_tokens[:, :, 2:]).abs().amax(dim=(0, 1, 3, 4))
    assert (changed > 1e-4).all(), "every noisy frame must receive motion"


def test_frame_mask_gives_clean_frames_timestep_zero_in_the_diffusers_host():
    """With conditioning frames, WanTransformer3DModel gets per-token timesteps: 0 on the clean frames' tokens,
    the sampler's t on the noisy ones, and its prediction differs from the one-timestep call."""
    pipe = tiny_pipeline()
    cond = ChunkConditioning(torch.randn(1, 16, 2, 8, 8), 1, 0, 1)
    noisy, text, t = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 4, TEXT_DIM), torch.tensor([700.0])
    seen = []
    handle = pipe.transformer.condition_embedder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        masked = run_model_on_chunk(lambda x, mask: pipe.predict(x, t, text, frame_mask=mask), noisy, 16,
                                    pipe.transformer.patch_embedding, cond)
        unmasked = run_model_on_chunk(lambda x, _mask: pipe.predict(x, t, text), noisy, 16,
                                      pipe.transformer.patch_embedding, cond)
    handle.remove()
    per_token = seen[0].view(1, 5, 16)  # 5 frames of 4x4 tokens
    assert torch.equal(per_token[:, :2], torch.zeros(1, 2, 16)) and torch.equal(per_token[:, 2:], torch.full((1, 3, 16), 700.0))
    assert seen[1].shape == (1,)
    assert (masked - unmasked).abs().max() > 1e-4


def test_frame_mask_reaches_comfyui_wan_as_per_frame_timesteps():
    """The ComfyUI wrapper turns the sampler's [B] timestep into [B, T] with 0 on the conditioning frames."""
    import types

    module = pack_nodes("generate")
    seen = []

    def executor(x, timestep, *_args, **_kwargs):
        seen.append(timestep)
        return torch.zeros_like(x)

    executor.class_obj = types.SimpleNamespace(patch_embedding=torch.nn.Conv3d(16, 32, (1, 2, 2), (1, 2, 2)))
    window = module.ChunkWindow(0, ChunkConditioning(torch.randn(1, 16, 2, 4, 4), 1, 1, 0))
    out = module._emosh_diffusion_wrapper(executor, torch.randn(2, 16, 3, 4, 4), torch.tensor([900.0, 900.0]),
                                          None, transformer_options={module.CHUNK_KEY: window})
    assert out.shape == (2, 16, 3, 4, 4)
    assert torch.equal(seen[0], torch.tensor([[0.0, 0.0, 900.0, 900.0, 900.0]] * 2))


def test_schedule_and_step_progress():
    schedule = InjectionSchedule(0.5, 0.2, 0.6)
    assert [schedule.factor(i / 10) for i in range(10)] == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert schedule.factor(None) == 0.5
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [step_progress(s, sigmas) for s in (1.0, 0.75, 0.6, 0.25)] == [0.0, 0.25, 0.25, 0.75]
    with pytest.raises(InputError):
        InjectionSchedule(1.0, 0.8, 0.2)


def test_adapter_save_load_roundtrip_and_missing_file(tmp_path):
    from emosh.generate.loaders import load_adapter

    adapter = random_adapter()
    adapter.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    motion = torch.randn(1, 16, 2, 6, 6)
    for source in (tmp_path / "adapter", tmp_path / "adapter" / "diffusion_pytorch_model.safetensors"):
        loaded = load_adapter(source)  # the folder, or its weights file as ComfyUI lists it
        assert (loaded.dim, loaded.patch_size, loaded.latent_channels) == (32, (1, 2, 2), 16)
        assert torch.equal(loaded(motion), adapter(motion))
    assert torch.equal(MotionAdapter.from_pretrained(tmp_path / "adapter")(motion), adapter(motion))
    with pytest.raises(MissingModelError, match="nope.safetensors"):
        load_adapter(tmp_path / "nope.safetensors")


def test_adapter_files_of_the_first_format_still_load(tmp_path):
    """Single files written before the diffusers format (config in the header) load; other files are refused."""
    import json

    from safetensors.torch import save_file

    from emosh.generate.loaders import load_adapter

    adapter = random_adapter()
    tensors = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    config = {"dim": 32, "patch_size": [1, 2, 2], "latent_channels": 16}
    save_file(tensors, str(tmp_path / "old.safetensors"),
              metadata={"format": "emosh-motion-adapter", "version": "1", "config": json.dumps(config)})
    motion = torch.randn(1, 16, 2, 6, 6)
    assert torch.equal(load_adapter(tmp_path / "old.safetensors")(motion), adapter(motion))
    save_file(tensors, str(tmp_path / "lora.safetensors"), metadata={"format": "lora"})
    with pytest.raises(InputError, match="not an EMOSH motion adapter"):
        load_adapter(tmp_path / "lora.safetensors")
    for name, config in (("wan", {"_class_name": "WanTransformer3DModel", "num_layers": 2}),
                         ("animatediff", {"_class_name": "MotionAdapter", "motion_layers_per_block": 2})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        with pytest.raises(InputError, match=f"describes a {config['_class_name']} .*not an EMOSH MotionAdapter"):
            load_adapter(tmp_path / name)


def test_inject_motion_rejects_frame_count_mismatch():
    conv = torch.nn.Conv3d(16, 32, (1, 2, 2), (1, 2, 2))
    with inject_motion(conv, random_adapter(), torch.randn(1, 16, 2, 8, 8), 0, 1.0):
        with pytest.raises(InputError, match="Frame count mismatch"):
            conv(torch.randn(1, 16, 3, 8, 8))


# ---------------------------------------------------------------- chunk planning and assembly


@pytest.mark.parametrize("num,chunk,overlap", [(1, 5, 2), (5, 5, 0), (21, 6, 2), (22, 6, 2), (30, 7, 3), (13, 4, 3),
                                               (50, 21, 0), (9, 3, 1)])
def test_plan_covers_every_frame_once_with_overlaps(num, chunk, overlap):
    chunks = plan_chunks(num, chunk, overlap)
    assert chunks[0].start == 0 and chunks[-1].stop == num
    for a, b in zip(chunks, chunks[1:]):
        assert b.stop > a.stop and b.start > a.start
        assert a.stop - b.start == overlap, "consecutive chunks overlap by exactly `overlap` frames"
    assert all(c.length <= chunk for c in chunks)
    total = torch.zeros(num)
    for c in chunks:
        assert (c.weights > 0).all()
        total[c.start:c.stop] += c.weights
    assert torch.allclose(total, torch.ones(num)), "blending weights must sum to 1 on every frame"
    video = torch.randn(1, 2, num, 3, 3)
    assembler = ChunkAssembler(chunks, torch.zeros(1, 2, 1, 3, 3), temporal_frames=min(1, chunk - overlap))
    for c in chunks:
        assembler.add(c, video[:, :, c.start:c.stop])
    assert torch.allclose(assembler.output, video, atol=1e-6), "every frame appears exactly once in the output"


def test_chunk_conditioning_order_and_mask():
    chunks = plan_chunks(10, 4, 1)
    reference = torch.full((1, 16, 1, 2, 2), 7.0)
    assembler = ChunkAssembler(chunks, reference, temporal_frames=2)
    first = assembler.conditioning(chunks[0])
    assert first.num_frames == 1 and torch.equal(first.latents, reference)
    out0 = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 16, 4, 2, 2)
    assembler.add(chunks[0], out0)
    second = assembler.conditioning(chunks[1])  # starts at 3: temporal = frames 1, 2 (finished), spatial = frame 0
    assert (second.num_reference, second.num_spatial, second.num_temporal) == (1, 1, 2)
    assert second.latents[0, 0, :, 0, 0].tolist() == [7.0, 0.0, 1.0, 2.0]
    assert second.frame_mask(3).tolist() == [True] * 4 + [False] * 3
    i2v_in = second.prepend(torch.zeros(1, 36, 3, 2, 2), 16)
    assert i2v_in.shape == (1, 36, 7, 2, 2)
    assert torch.equal(i2v_in[:, 16:20, :4], torch.ones(1, 4, 4, 2, 2)), "mask channels mark conditioning frames"
    assert torch.equal(i2v_in[:, 16:20, 4:], torch.zeros(1, 4, 3, 2, 2))
    with pytest.raises(InputError, match="temporal_frames"):
        ChunkAssembler(chunks, reference, temporal_frames=4)


# ---------------------------------------------------------------- diffusers pipeline


@pytest.mark.slow
def test_chunked_sampling_is_deterministic_and_continuous_at_seams():
    pipe = tiny_pipeline()
    control = moving_video(37)
    reference = control[0].flip(1)
    text = torch.randn(1, 6, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    args = dict(num_inference_steps=3, guidance_scale=3.0, chunk_frames=17, overlap_frames=8, seed=11)
    out = pipe(reference, control, text, -text, **args)
    again = pipe(reference, control, text, -text, **args)
    other = pipe(reference, control, text, -text, **{**args, "seed": 12})
    assert out.video.shape == (37, 32, 32, 3) and out.latents.shape == (1, 16, 10, 4, 4)
    assert torch.equal(out.latents, again.latents) and torch.equal(out.video, again.video)
    assert not torch.allclose(out.latents, other.latents)
    chunks = plan_chunks(10, 5, 2)
    assert len(chunks) >= 3
    diffs = (out.latents[:, :, 1:] - out.latents[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))
    seams = {c.start - 1 for c in chunks[1:]} | {c.stop - 1 for c in chunks[:-1]}
    seam = max(float(diffs[i]) for i in seams)
    within = [float(diffs[i]) for i in range(len(diffs)) if i not in seams]
    assert seam <= max(within), f"seam jump {seam:.4f} exceeds within-chunk frame differences {within}"


def test_motion_changes_generation_and_zero_strength_does_not():
    pipe = tiny_pipeline()
    control = moving_video(9)
    text = torch.randn(1, 6, TEXT_DIM)
    args = dict(num_inference_steps=2, guidance_scale=1.0, chunk_frames=9, overlap_frames=0, seed=3, decode=False)
    base = pipe(control[0], control, text, schedule=InjectionSchedule(0.0), **args).latents
    moved = pipe(control[0], control, text, **args).latents
    zero_pipe = tiny_pipeline(MotionAdapter(32))
    zero = zero_pipe(control[0], control, text, **args).latents
    assert torch.equal(zero, base)
    assert (moved - base).abs().max() > 1e-4


def test_partial_denoise_keeps_the_init_video():
    """The less is denoised, the closer the result stays to the init video's latents (and not to another video)."""
    pipe = tiny_pipeline()
    control = moving_video(9)
    init = control.flip(2)
    text = torch.randn(1, 6, TEXT_DIM, generator=torch.Generator().manual_seed(2))
    init_latents, other_latents = pipe.encode_video(init), pipe.encode_video(control)
    args = dict(num_inference_steps=4, guidance_scale=1.0, chunk_frames=9, overlap_frames=0, decode=False)

    def result(denoise: float) -> torch.Tensor:
        return pipe(control[0], control, text, init_video=init, denoise=denoise, **args).latents

    light, half, full = result(0.25), result(0.5), result(1.0)
    distance = [float((out - init_latents).abs().mean()) for out in (light, half, full)]
    assert distance[0] < 0.2 * float(init_latents.abs().mean()), "one step of four keeps the init video"
    assert distance[0] < float((light - other_latents).abs().mean()) / 2, "closer to the init than to another video"
    assert distance[0] < distance[1] < distance[2], distance
    decoded = pipe(control[0], control, text, init_video=init, denoise=0.5, num_inference_steps=4,
                   guidance_scale=1.0, chunk_frames=9, overlap_frames=0)
    assert torch.isfinite(decoded.latents).all() and decoded.video.shape == control.shape


def test_bad_inputs_give_clear_errors(tmp_path):
    control = moving_video(9)
    with pytest.raises(InputError, match="Frame count mismatch"):
        check_video_inputs(control, control[0], init_video=control[:5])
    with pytest.raises(InputError, match="Wrong size"):
        check_video_inputs(control, control[0, :16])
    with pytest.raises(InputError, match="multiples of 16"):
        check_video_inputs(control[:, :24], control[0, :24])
    with pytest.raises(InputError, match="chunk"):
        plan_chunks(10, 4, 4)
    with pytest.raises(InputError, match="init video"):
        tiny_pipeline().sample_latents(torch.zeros(1, 16, 3, 4, 4), torch.zeros(1, 16, 1, 4, 4),
                                       torch.zeros(1, 4, TEXT_DIM), denoise=0.5)
    pipe = tiny_pipeline()
    with pytest.raises(InputError, match="Wrong size"):
        pipe(control[0, :16], control, torch.zeros(1, 4, TEXT_DIM), num_inference_steps=1)
    from emosh.generate.pipeline import EmoshPipeline

    with pytest.raises(MissingModelError, match="missing_model"):
        EmoshPipeline.from_pretrained(tmp_path / "missing_model")
    with pytest.raises(InputError, match="adapter"):
        EmoshPipeline(tiny_transformer(), tiny_vae(), None)
    with pytest.raises(InputError, match="does not fit"):
        EmoshPipeline(tiny_transformer(), tiny_vae(), None, MotionAdapter(64))


def test_pipeline_loads_diffusers_folder_and_single_file(tmp_path):
    import json

    from safetensors.torch import save_file

    from emosh.generate.pipeline import EmoshPipeline

    transformer, vae = tiny_transformer(), tiny_vae()
    transformer.save_pretrained(tmp_path / "model" / "transformer", safe_serialization=True)
    vae.save_pretrained(tmp_path / "model" / "vae", safe_serialization=True)
    random_adapter().save_pretrained(tmp_path / "adapter")
    pipe = EmoshPipeline.from_pretrained(tmp_path / "model", adapter=tmp_path / "adapter")
    assert torch.equal(pipe.transformer.patch_embedding.weight, transformer.patch_embedding.weight)
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    save_file(transformer.state_dict(), str(tmp_path / "wan.safetensors"),
              metadata={"config": json.dumps(config, default=list)})
    single = EmoshPipeline.from_pretrained(tmp_path / "wan.safetensors", vae=tmp_path / "model" / "vae",
                                           adapter=tmp_path / "adapter")
    x = torch.randn(1, 16, 2, 4, 4)
    kwargs = dict(timestep=torch.tensor([10.0]), encoder_hidden_states=torch.zeros(1, 3, TEXT_DIM), return_dict=False)
    with torch.no_grad():
        assert torch.equal(single.transformer(x, **kwargs)[0], transformer(x, **kwargs)[0])
    with pytest.raises(MissingModelError, match="no_adapter.safetensors"):
        EmoshPipeline.from_pretrained(tmp_path / "model", adapter=tmp_path / "no_adapter.safetensors")


def test_wan_animate_transformer_uses_its_pose_embedding():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanAnimateTransformer3DModel

    from emosh.generate.pipeline import EmoshPipeline

    torch.manual_seed(0)
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36, latent_channels=16,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, image_dim=None,
        rope_max_seq_len=64, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16, "32": 16, "64": 16,
                                                           "128": 16, "256": 16, "512": 16},
        motion_encoder_size=16, motion_style_dim=16, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
        face_encoder_num_heads=2, inject_face_latents_blocks=1).eval()
    pipe = EmoshPipeline(transformer, tiny_vae(), FlowMatchEulerDiscreteScheduler())
    assert pipe.adapter.proj is transformer.pose_patch_embedding
    control = moving_video(9)
    out = pipe(control[0], control, torch.zeros(1, 4, TEXT_DIM), num_inference_steps=2, guidance_scale=1.0,
               chunk_frames=9, overlap_frames=0, decode=False)
    assert torch.isfinite(out.latents).all()


# ---------------------------------------------------------------- training


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision, device): each training run here starts anew."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _fixed_samples(video: torch.Tensor, reference: torch.Tensor):
    from emosh.train import Sample

    while True:
        yield Sample(video, video.flip(2), reference)


def _recording_model_inputs(pipe):
    """Forward pre-hook on the DiT's patch embedding: every model input of a training run, in order."""
    inputs = []
    handle = pipe.transformer.patch_embedding.register_forward_pre_hook(
        lambda _m, args: inputs.append(args[0].detach().clone()))
    return inputs, handle


def test_reference_frame_is_drawn_outside_the_training_window(tmp_path):
    """Frame i of the clip is grey level 8*i: the reference's level is never one of the window's."""
    import random

    from emosh.train import load_clip
    from emosh.video import write_video

    levels = torch.arange(24) * 8 + 40
    video = levels.view(-1, 1, 1, 1).expand(24, 32, 32, 3).to(torch.uint8).numpy().copy()
    write_video(tmp_path / "clip.mp4", video, fps=8)
    write_video(tmp_path / "clip.control.mp4", video, fps=8)
    rng = random.Random(0)
    for _ in range(6):
        sample = load_clip(tmp_path / "clip.mp4", tmp_path / "clip.control.mp4", 9, (32, 32), rng)
        window = {round(float(f.mean()) * 255 / 8) for f in sample.video}
        assert sample.reference.shape == (1, 32, 32, 3)
        assert round(float(sample.reference.mean()) * 255 / 8) not in window
    with pytest.raises(InputError, match="reference"):
        load_clip(tmp_path / "clip.mp4", tmp_path / "clip.control.mp4", 24, (32, 32), rng)


def test_later_chunk_examples_are_conditioned_as_the_sampler_conditions_them():
    """chunk_example(k) = what denoise_in_chunks hands chunk k when every earlier chunk came out as the clip."""
    from emosh.generate.chunks import denoise_in_chunks, pixel_to_latent_chunking
    from emosh.train import chunk_example

    latents = torch.randn(1, 16, 8, 4, 4)
    motion = torch.randn(1, 16, 8, 4, 4)
    reference = torch.randn(1, 16, 1, 4, 4)
    seen = []

    def as_the_clip(chunk, cond, _noise):
        seen.append(cond)
        return latents[:, :, chunk.start:chunk.stop]

    denoise_in_chunks(torch.zeros_like(latents), reference, 13, 4, as_the_clip, temporal_frames=1)
    chunks = plan_chunks(8, *pixel_to_latent_chunking(13, 4))
    assert len(chunks) == 3
    for index, sampler_cond in enumerate(seen):
        example = chunk_example(latents, motion, reference, chunks, index, temporal_frames=1)
        assert torch.equal(example.conditioning.latents, sampler_cond.latents)
        assert (example.conditioning.num_spatial, example.conditioning.num_temporal) == (
            (1, 1) if index else (0, 0))
        assert torch.equal(example.target, latents[:, :, chunks[index].start:chunks[index].stop])
        assert torch.equal(example.motion, motion[:, :, chunks[index].start:chunks[index].stop])
    assert torch.equal(seen[1].latents[:, :, 1:2], latents[:, :, :1]), "spatial slot = the clip's first latent"


def test_training_fills_and_trains_the_spatial_slot_and_uses_the_outside_reference():
    """Later-chunk steps put the clip's first latent frame in the spatial slot, which then gets gradients; the
    reference slot holds the sample's reference image, not a frame of the clip."""
    from emosh.train import train

    pipe = tiny_pipeline(MotionAdapter(32))
    video, reference = moving_video(9), moving_video(9).flip(1)[4:5]
    inputs, handle = _recording_model_inputs(pipe)
    grads = []

    def keep_spatial_grad(_m, args, out):
        if args[0].shape[2] > 3:  # reference + spatial + temporal + noisy frames: a later chunk
            out = out.detach().requires_grad_(True)  # the frozen conv's tokens, as a leaf the loss reaches
            out.register_hook(lambda g: grads.append(g[:, :, 1].abs().sum().item()))
        return out

    grad_handle = pipe.transformer.patch_embedding.register_forward_hook(keep_spatial_grad)
    try:
        train(pipe, _fixed_samples(video, reference), steps=6, lr=1e-3, chunk_frames=5, overlap_frames=0,
              temporal_frames=1, log_every=0)
    finally:
        handle.remove()
        grad_handle.remove()
    latents, ref_latent = pipe.encode_video(video), pipe.encode_video(reference)
    later = [x for x in inputs if x.shape[2] == 4]  # [reference][spatial][temporal][1 noisy frame]
    assert later, "no later-chunk example in 6 steps"
    for x in inputs:
        assert torch.allclose(x[:, :, 0], ref_latent[:, :, 0], atol=1e-5), "reference slot"
    for x in later:
        assert torch.allclose(x[:, :, 1], latents[:, :, 0], atol=1e-5), "spatial slot = first latent of the clip"
        assert torch.allclose(x[:, :, 2], latents[:, :, 1], atol=1e-5), "temporal slot = the frame before"
    assert grads and all(g > 0 for g in grads), "the spatial slot's tokens get no gradient"


def test_training_loss_falls_on_a_tiny_overfit():
    """A fixed-seed evaluation of the flow-matching loss on the training clip drops after 40 steps on it."""
    from emosh.generate.chunks import pixel_to_latent_chunking
    from emosh.train import ChunkDenoiser, chunk_example, flow_matching_loss, train

    torch.manual_seed(0)
    pipe = tiny_pipeline(MotionAdapter(32))
    video, reference = moving_video(9), moving_video(9).flip(1)[4:5]
    latents, motion = pipe.encode_video(video), pipe.encode_video(video.flip(2))
    chunks = plan_chunks(latents.shape[2], *pixel_to_latent_chunking(5, 0))
    examples = [chunk_example(latents, motion, pipe.encode_video(reference), chunks, i, 1) for i in range(2)]
    text = torch.zeros(1, 8, TEXT_DIM)

    def held_loss() -> float:
        denoiser = ChunkDenoiser(pipe)
        with torch.no_grad():
            return sum(float(flow_matching_loss(denoiser, ex, text, torch.Generator().manual_seed(s)))
                       for ex in examples for s in range(4))

    before = held_loss()
    losses, _ = train(pipe, _fixed_samples(video, reference), steps=40, lr=3e-3, lora_rank=4, lora_alpha=4.0,
                      chunk_frames=5, overlap_frames=0, log_every=0)
    after = held_loss()
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-10:]) < sum(losses[:10])


def test_accelerate_prepares_the_module_that_computes_every_loss(monkeypatch):
    """What accelerate wraps (DDP under a multi-process launch) holds all trained parameters and is called for
    every step: DDP all-reduces gradients only of a module whose forward ran."""
    import accelerate

    from emosh.train import train

    calls, prepared = [], []
    real_prepare = accelerate.Accelerator.prepare

    def spy(self, *objects):
        out = real_prepare(self, *objects)
        for obj in out:
            if isinstance(obj, torch.nn.Module):
                prepared.append(obj)
                obj.register_forward_hook(lambda *_: calls.append(1))
        return out

    monkeypatch.setattr(accelerate.Accelerator, "prepare", spy)
    pipe = tiny_pipeline(MotionAdapter(32))
    _, lora = train(pipe, _fixed_samples(moving_video(9), moving_video(5)[:1]), steps=3, lora_rank=2,
                    chunk_frames=5, overlap_frames=0, log_every=0)
    assert len(prepared) == 1 and len(calls) == 3
    trained = {id(p) for p in prepared[0].parameters() if p.requires_grad}
    expected = {id(p) for p in pipe.adapter.parameters()} | {id(p) for l in lora.values() for p in (l.lora_a, l.lora_b)}
    assert trained == expected


def test_lora_starts_from_the_training_seed_whatever_the_global_random_state():
    """Every launch of a seeded run, and every process of it, starts from the same LoRA."""
    from emosh.train import train

    def initial_lora(global_seed: int, seed: int) -> torch.Tensor:
        pipe = tiny_pipeline(MotionAdapter(32))
        torch.manual_seed(global_seed)
        _, lora = train(pipe, iter([]), steps=0, lora_rank=2, seed=seed, log_every=0)
        return torch.cat([layer.lora_a.detach().flatten() for layer in lora.values()])

    assert torch.equal(initial_lora(1, seed=3), initial_lora(2, seed=3))
    assert not torch.equal(initial_lora(1, seed=3), initial_lora(1, seed=4))


def test_resumed_training_ends_where_the_uninterrupted_run_ends(tmp_path):
    from emosh.train import train

    video, reference = moving_video(9), moving_video(5)[:1]
    args = dict(lr=1e-2, lora_rank=2, chunk_frames=5, overlap_frames=0, log_every=0)
    straight = tiny_pipeline(MotionAdapter(32))
    train(straight, _fixed_samples(video, reference), steps=4, checkpoint_dir=tmp_path / "a", checkpoint_every=2,
          **args)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["step-000002", "step-000004"]
    resumed = tiny_pipeline(MotionAdapter(32))
    losses, _ = train(resumed, _fixed_samples(video, reference), steps=4, resume_from=tmp_path / "a" / "step-000002",
                      **args)
    assert len(losses) == 2
    assert torch.allclose(resumed.adapter.proj.weight, straight.adapter.proj.weight, atol=1e-6)
    x = torch.randn(1, 16, 2, 4, 4)
    kwargs = dict(timestep=torch.tensor([10.0]), encoder_hidden_states=torch.zeros(1, 3, TEXT_DIM), return_dict=False)
    with torch.no_grad():
        assert torch.allclose(resumed.transformer(x, **kwargs)[0], straight.transformer(x, **kwargs)[0], atol=1e-5)


def test_gradient_checkpointing_gives_the_same_steps_and_bf16_trains(fresh_accelerate_state):
    from accelerate.state import AcceleratorState

    from emosh.train import train

    video, reference = moving_video(9), moving_video(5)[:1]
    args = dict(steps=2, lr=1e-2, lora_rank=2, chunk_frames=5, overlap_frames=0, log_every=0)
    plain, checkpointed = tiny_pipeline(MotionAdapter(32)), tiny_pipeline(MotionAdapter(32))
    losses, _ = train(plain, _fixed_samples(video, reference), **args)
    ck_losses, _ = train(checkpointed, _fixed_samples(video, reference), gradient_checkpointing=True, **args)
    assert checkpointed.transformer.gradient_checkpointing
    assert losses[0] == pytest.approx(ck_losses[0], rel=1e-6)  # recomputation only, same maths
    assert losses[1] == pytest.approx(ck_losses[1], rel=1e-3)  # after one Adam step on float-rounded gradients
    AcceleratorState._reset_state(reset_partial_state=True)
    half = tiny_pipeline(MotionAdapter(32))
    bf16_losses, lora = train(half, _fixed_samples(video, reference), mixed_precision="bf16", **args)
    assert half.transformer.proj_out.weight.dtype == torch.bfloat16, "frozen DiT stored in bf16"
    assert half.adapter.proj.weight.dtype == torch.float32 and half.adapter.proj.weight.abs().max() > 0
    assert all(torch.isfinite(torch.tensor(bf16_losses)))


def test_trained_lora_is_what_comfyui_and_the_diffusers_host_load(tmp_path):
    """The file's keys follow ComfyUI's rule (``lora_unet_`` + native Wan key, dots as underscores; update =
    alpha / rank * up @ down); applying it that way to native weights, converted with diffusers' own converter,
    gives the trained model, and so does the diffusers host's load_lora."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from emosh.generate.lora import add_lora, load_lora, native_module_name, save_lora

    trained = tiny_transformer()
    lora = add_lora(trained, 2, 3.0)
    with torch.no_grad():
        for layer in lora.values():
            layer.lora_b.normal_(0.0, 0.3)
    save_lora(lora, tmp_path / "emosh_lora.safetensors")
    from emosh.safeio import read_safetensors

    tensors, _ = read_safetensors(tmp_path / "emosh_lora.safetensors")
    base = tiny_transformer()
    native = {f"{native_module_name(name)}.weight": base.get_submodule(name).weight.detach().clone()
              for name in lora}
    assert set(convert_wan_transformer_to_diffusers(dict(native))) == {f"{name}.weight" for name in lora}
    comfy_key_map = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): k for k in native}
    for key in {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".weight")}:
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        native[comfy_key_map[key]] += float(tensors[f"{key}.alpha"]) / down.shape[0] * up @ down
    merged = tiny_transformer()
    state = merged.state_dict()
    state.update(convert_wan_transformer_to_diffusers(native))
    merged.load_state_dict(state)
    loaded = tiny_transformer()
    assert len(load_lora(loaded, tmp_path / "emosh_lora.safetensors")) == len(lora)
    x = torch.randn(1, 16, 2, 4, 4)
    kwargs = dict(timestep=torch.tensor([10.0]), encoder_hidden_states=torch.randn(1, 3, TEXT_DIM), return_dict=False)
    with torch.no_grad():
        want = trained(x, **kwargs)[0]
        assert (want - base(x, **kwargs)[0]).abs().max() > 1e-3
        assert torch.allclose(merged(x, **kwargs)[0], want, atol=1e-5)
        assert torch.allclose(loaded(x, **kwargs)[0], want, atol=1e-5)


def _tiny_training_folder(tmp_path):
    """``tmp_path/model`` (tiny diffusers Wan folder) and ``tmp_path/data`` with one 12-frame 32 px clip and its
    control video (the clip mirrored); returns the data folder and the clip ``[12, 32, 32, 3]`` uint8."""
    from emosh.video import write_video

    tiny_transformer().save_pretrained(tmp_path / "model" / "transformer", safe_serialization=True)
    tiny_vae().save_pretrained(tmp_path / "model" / "vae", safe_serialization=True)
    data = tmp_path / "data"
    data.mkdir()
    video = (moving_video(12) * 255).to(torch.uint8).numpy()
    write_video(data / "clip.mp4", video, fps=8)
    write_video(data / "clip.control.mp4", video[:, :, ::-1].copy(), fps=8)
    return data, video


def test_train_cli_on_video_pairs(tmp_path, capsys):
    import json
    import random

    from emosh.generate.lora import adapter_lora_path
    from emosh.train import load_clip, main
    from emosh.video import write_video

    data, video = _tiny_training_folder(tmp_path)
    code = main(["--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--frames", "9", "--chunk-frames", "5", "--overlap-frames", "0", "--height", "32",
                 "--width", "32", "--lora-rank", "2", "--checkpoint-every", "1", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"]  # not NaN
    adapter_dir = tmp_path / "run" / "emosh_adapter"
    assert MotionAdapter.from_pretrained(adapter_dir).proj.weight.abs().max() > 0
    assert adapter_lora_path(adapter_dir / "diffusion_pytorch_model.safetensors") == adapter_dir / "emosh_lora.safetensors"
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()
    code = main(["--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--steps", "3", "--frames", "9", "--chunk-frames", "5", "--overlap-frames", "0", "--height", "32",
                 "--width", "32", "--lora-rank", "2", "--device", "cpu",
                 "--resume", str(tmp_path / "run" / "checkpoints" / "step-000002")])
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    write_video(data / "short.control.mp4", video[:10], fps=8)
    with pytest.raises(InputError, match="Frame count mismatch"):
        load_clip(data / "clip.mp4", data / "short.control.mp4", 9, (32, 32), random.Random(0))


@pytest.mark.slow
def test_two_process_accelerate_launch_all_reduces_the_gradients(tmp_path):
    """The documented CPU launch, ``accelerate launch --multi_gpu --num_processes 2 -m emosh.train --device cpu``,
    runs 2 processes (gloo). Process 0 draws exactly the clip and noise a single-process run draws (same first
    loss), so it can end with other weights only if its gradients were averaged with process 1's."""
    import json
    import os
    import socket
    import subprocess

    from emosh.generate.adapter import MotionAdapter
    from emosh.generate.lora import adapter_lora_path

    data, _ = _tiny_training_folder(tmp_path)
    with socket.socket() as s:  # a free rendezvous port: other runs on this machine may hold accelerate's default
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # same threads: bit-equal processes
    args = ["-m", "emosh.train", "--device", "cpu", "--model", str(tmp_path / "model"), "--data", str(data),
            "--steps", "2", "--frames", "9", "--chunk-frames", "5", "--overlap-frames", "0", "--height", "32",
            "--width", "32", "--lora-rank", "2", "--lr", "1e-2", "--checkpoint-every", "1"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port)]
    runs = {}
    for name, command in (("two", launch + args), ("one", [sys.executable] + args)):
        done = subprocess.run(command + ["--out", str(tmp_path / name)], env=env, capture_output=True, text=True,
                              timeout=240, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert runs["two"][-1]["processes"] == 2 and runs["one"][-1]["processes"] == 1
    assert runs["two"][0]["loss"] == runs["one"][0]["loss"], "process 0 draws what a single process draws"
    two, one = (MotionAdapter.from_pretrained(tmp_path / name / "emosh_adapter").proj.weight for name in runs)
    assert (two - one).abs().max() > 1e-3, "process 0 trained alone: gradients were not all-reduced"
    assert adapter_lora_path(tmp_path / "two" / "emosh_adapter" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


# ---------------------------------------------------------------- node schemas (no ComfyUI needed)


def test_node_schemas():
    module = pack_nodes("generate")
    schemas = {cls.__name__: cls.define_schema() for cls in module.NODES}
    assert {s.display_name for s in schemas.values()} == {"Hybrid Motion Injector", "EMOSH Sampler"}
    for cls in module.NODES:
        schema = cls.define_schema()
        assert schema.category == "EMOSH/generate" and schema.description
        assert all(o.display_name and o.tooltip for o in schema.outputs)
        for item in schema.inputs:
            assert item.tooltip, f"{cls.__name__}.{item.id} has no tooltip"
            if item.io_type in ("INT", "FLOAT"):
                assert item.min <= item.default <= item.max, item.id
    assert [o.io_type for o in schemas["EmoshSampler"].outputs] == ["LATENT", "IMAGE"]
    assert [o.io_type for o in schemas["HybridMotionInjector"].outputs] == ["MODEL"]


class _ComfyStandIns:
    """The few ComfyUI calls the EMOSH Sampler makes, recorded: sampling returns the chunk's own noise, so the
    assembled latent must be the whole video's noise again."""

    def __init__(self, monkeypatch) -> None:
        import types

        self.calls, self.progress = [], []
        comfy = types.ModuleType("comfy")
        comfy.sample = types.SimpleNamespace(
            prepare_noise=lambda latent, seed: torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed)),
            sample=self.sample)
        comfy.utils = types.SimpleNamespace(ProgressBar=lambda total: types.SimpleNamespace(
            update_absolute=lambda done, total=None: self.progress.append((done, total))))
        comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=lambda: None)
        comfy.patcher_extension = types.SimpleNamespace(WrappersMP=types.SimpleNamespace(DIFFUSION_MODEL="diffusion"))
        for name in ("sample", "utils", "model_management", "patcher_extension"):
            monkeypatch.setitem(sys.modules, f"comfy.{name}", getattr(comfy, name))
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        monkeypatch.setitem(sys.modules, "node_helpers", types.SimpleNamespace())

    def sample(self, model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, **kwargs):
        self.calls.append((model.model_options["transformer_options"]["emosh_chunk"], noise, latent_image))
        return noise.clone()


class _StandInModel:
    """A ComfyUI MODEL as far as the sampler touches it (clone, wrappers, options, latent format)."""

    def __init__(self) -> None:
        import types

        self.model = types.SimpleNamespace(process_latent_in=lambda latents: 2.0 * latents)
        self.model_options, self.wrappers = {}, {}

    def clone(self) -> "_StandInModel":
        import copy

        other = _StandInModel()
        other.model, other.model_options = self.model, copy.deepcopy(self.model_options)
        other.wrappers = copy.deepcopy(self.wrappers)
        return other

    def add_wrapper_with_key(self, kind, key, fn) -> None:
        self.wrappers.setdefault(kind, {})[key] = fn


class _StandInVae:
    """Encodes each latent frame as the mean of its pixels (so init latents are recognisable); decodes to grey."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = frames.shape
        means = torch.stack([frames[:1].mean()] + [frames[i:i + 4].mean() for i in range(1, n, 4)])
        return means.view(1, 1, -1, 1, 1).expand(1, 16, -1, h // 8, w // 8).clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = latents.shape
        return torch.full((1, 4 * (t - 1) + 1, 8 * h, 8 * w, 3), 0.5)


def test_sampler_node_runs_the_shared_chunk_loop(monkeypatch):
    """The EMOSH Sampler node, with ComfyUI stood in: one sampler run per planned chunk on that chunk's slice of the
    whole-video noise and of the init latents, conditioning in model space, progress to the last chunk."""
    comfy = _ComfyStandIns(monkeypatch)
    sampler = pack_nodes("generate").EmoshSampler
    control = moving_video(37)
    init = control.flip(2)
    latent, images = sampler.execute(_StandInModel(), [], [], _StandInVae(), control[:1], control, seed=5, steps=2,
                                     cfg=1.0, sampler_name="euler", scheduler="simple", chunk_frames=17,
                                     overlap_frames=8, temporal_latents=1, denoise=0.5, init_video=init).args
    chunks = plan_chunks(10, 5, 2)
    noise = torch.randn(1, 16, 10, 4, 4, generator=torch.Generator().manual_seed(5))
    assert [window.start for window, _, _ in comfy.calls] == [c.start for c in chunks]
    init_latents = _StandInVae().encode(init)
    for chunk, (window, chunk_noise, latent_image) in zip(chunks, comfy.calls):
        assert torch.equal(chunk_noise, noise[:, :, chunk.start:chunk.stop])
        assert torch.equal(latent_image, init_latents[:, :, chunk.start:chunk.stop])
        expected_temporal = 1 if chunk.index else 0
        assert window.conditioning.num_temporal == expected_temporal
    reference = _StandInVae().encode(control[:1])
    assert torch.equal(comfy.calls[0][0].conditioning.latents, 2.0 * reference), "conditioning in model space"
    assert torch.allclose(latent["samples"], noise, atol=1e-6), "chunks cross-faded back into one video"
    assert comfy.progress[-1] == (len(chunks), len(chunks)) and images.shape == (37, 32, 32, 3)
