"""ComfyUI nodes for EMOSH generation: Hybrid Motion Injector and EMOSH Sampler.

Thin adapters: they convert ComfyUI objects (MODEL, VAE, IMAGE, CONDITIONING) and call ``emosh.generate``, where
the maths lives. ComfyUI modules other than ``comfy_api`` are imported inside the functions.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from comfy_api.latest import io

from ..emosh.errors import InputError
from ..emosh.generate.adapter import InjectionSchedule, MotionAdapter, step_progress
from ..emosh.generate.chunks import (ChunkConditioning, check_video_inputs, denoise_in_chunks, frame_timesteps,
                                     latent_frame_count, pad_video_to_latent_grid, run_model_on_chunk)
from ..emosh.generate.loaders import load_adapter
from ..emosh.generate.lora import adapter_lora_path
from ..emosh.safeio import read_safetensors

log = logging.getLogger(__name__)

CATEGORY = "EMOSH/generate"
MODEL_FOLDER = "emosh"
WRAPPER_KEY = "emosh"
MOTION_KEY = "emosh_motion"
CHUNK_KEY = "emosh_chunk"
USE_ANIMATE_EMBEDDING = "(Wan-Animate pose_patch_embedding)"


@dataclasses.dataclass(frozen=True)
class MotionPatch:
    """What the Hybrid Motion Injector puts in ``transformer_options``: adapter, motion latents, schedule.

    ``adapter`` None means: use the Wan-Animate model's own ``pose_patch_embedding``. ComfyUI deep-copies
    ``model_options`` on every clone; this object is immutable, so copies share it.
    """

    adapter: MotionAdapter | None
    motion_latents: torch.Tensor  # model-space latents [1, C, T, h, w] of the whole control video
    schedule: InjectionSchedule
    pixel_frames: int

    def __deepcopy__(self, memo: dict) -> "MotionPatch":
        return self


@dataclasses.dataclass(frozen=True)
class ChunkWindow:
    """What the EMOSH Sampler puts in ``transformer_options`` for one chunk: where it starts, what conditions it."""

    start: int
    conditioning: ChunkConditioning

    def __deepcopy__(self, memo: dict) -> "ChunkWindow":
        return self


def _emosh_diffusion_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                             transformer_options=None, **kwargs):
    """Keyed DIFFUSION_MODEL wrapper (signature of ``WanModel.forward``): chunk conditioning in time + motion tokens.

    Its data come from ``transformer_options``, so it stacks with other packs' wrappers and leaves the model
    itself untouched. ComfyUI's ``WanModel`` takes per-frame timesteps ``[B, T]`` (its Wan 2.2 path), so the clean
    conditioning frames get timestep 0; a timestep that is already per-token (``[B, N]``) is passed on as it is.
    """
    options = transformer_options or {}
    motion: MotionPatch | None = options.get(MOTION_KEY)
    window: ChunkWindow | None = options.get(CHUNK_KEY)

    def call(inp: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        t = frame_timesteps(timestep, frame_mask) if timestep.ndim == 1 and bool(frame_mask.any()) else timestep
        return executor(inp, t, context, clip_fea, time_dim_concat, transformer_options, **kwargs)

    if motion is None and window is None:
        return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
    model = executor.class_obj
    start = window.start if window is not None else 0
    adapter, latents, factor = None, None, 0.0
    if motion is not None:
        adapter = motion.adapter or MotionAdapter.from_conv(model.pose_patch_embedding)
        latents = motion.motion_latents[:, :, start:start + x.shape[2]]
        if latents.shape[2] != x.shape[2]:
            raise InputError(f"Frame count mismatch: the Hybrid Motion Injector got {motion.pixel_frames} control "
                             f"frames ({motion.motion_latents.shape[2]} latent frames) but the sampler generates "
                             f"latent frames {start}..{start + x.shape[2] - 1}; give the control video the length of "
                             f"the output video.")
        progress = None
        if "sample_sigmas" in options and "sigmas" in options:
            progress = step_progress(float(options["sigmas"].flatten()[0]), options["sample_sigmas"])
        factor = motion.schedule.factor(progress)
    conditioning = window.conditioning if window is not None else None
    latent_channels = motion.motion_latents.shape[1] if motion is not None else conditioning.latents.shape[1]
    return run_model_on_chunk(call, x, latent_channels, model.patch_embedding, conditioning, adapter, latents,
                              factor)


def _with_emosh_wrapper(model):
    """A clone of ``model`` with the EMOSH wrapper installed exactly once."""
    import comfy.patcher_extension

    patched = model.clone()
    wrappers = patched.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    if WRAPPER_KEY not in wrappers:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                     _emosh_diffusion_wrapper)
    return patched


def _set_transformer_option(model, key: str, value: Any) -> None:
    """Put ``value`` where the wrapper finds it: the clone's ``transformer_options``."""
    model.model_options.setdefault("transformer_options", {})[key] = value


def _encode_frames(vae, frames: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[N, H, W, C]`` → raw VAE latents ``[1, C, T, h, w]`` (frames padded to 4k+1 first)."""
    return vae.encode(pad_video_to_latent_grid(frames[..., :3]))


def _adapter_files() -> list[str]:
    """Adapter files in ``models/emosh/`` (empty outside ComfyUI, so the schema builds for tests)."""
    try:
        import folder_paths
        return [f for f in folder_paths.get_filename_list(MODEL_FOLDER) if f.endswith(".safetensors")]
    except (ImportError, KeyError):
        return []


class HybridMotionInjector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshHybridMotionInjector",
            display_name="Hybrid Motion Injector",
            category=CATEGORY,
            description=("EMOSH Hybrid Motion Injection: encodes the hybrid control frames with the VAE into motion "
                         "latents and adds them, through a patch embedding, to the noisy video tokens of a native Wan "
                         "model. Returns a patched copy of the MODEL that works with stock KSampler, "
                         "SamplerCustomAdvanced and the EMOSH Sampler. With a Wan-Animate model its own "
                         "pose_patch_embedding is used (no adapter file)."),
            inputs=[
                io.Model.Input("model", tooltip="A native Wan 2.1/2.2 video model (UNETLoader / Load Diffusion "
                                                "Model)."),
                io.Vae.Input("vae", tooltip="The Wan VAE that encodes the control frames into motion latents."),
                io.Image.Input("control", tooltip="Hybrid control frames (Mesh Condition Renderer), one per output "
                                                  "frame, at the output resolution."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplier of the motion tokens; 0 disables the injection."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling steps after which the motion is added."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling steps after which the motion stops."),
                io.Combo.Input("adapter", options=_adapter_files() + [USE_ANIMATE_EMBEDDING],
                               tooltip="EMOSH adapter weights (.safetensors) from models/emosh/. Choose the "
                                       "Wan-Animate entry to use a Wan-Animate model's own pose_patch_embedding."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The Wan model with the motion injection "
                                                                   "attached (the input MODEL is left unchanged).")],
        )

    @classmethod
    def execute(cls, model, vae, control: torch.Tensor, strength: float, start_percent: float, end_percent: float,
                adapter: str) -> io.NodeOutput:
        diffusion_model = model.model.diffusion_model
        lora_file = None
        if adapter == USE_ANIMATE_EMBEDDING:
            if not hasattr(diffusion_model, "pose_patch_embedding"):
                raise InputError("This MODEL is not a Wan-Animate model (no pose_patch_embedding): choose an EMOSH "
                                 "adapter file from models/emosh/.")
            motion_adapter = None
        else:
            import folder_paths
            adapter_file = folder_paths.get_full_path_or_raise(MODEL_FOLDER, adapter)
            motion_adapter = load_adapter(adapter_file)
            lora_file = adapter_lora_path(adapter_file)  # the LoRA `python -m emosh.train` wrote beside it
            embed = diffusion_model.patch_embedding
            if motion_adapter.dim != embed.out_channels or motion_adapter.patch_size != tuple(embed.kernel_size):
                raise InputError(f"Adapter {adapter} (dim {motion_adapter.dim}, patch {motion_adapter.patch_size}) "
                                 f"does not fit this model (dim {embed.out_channels}, patch "
                                 f"{tuple(embed.kernel_size)}).")
        schedule = InjectionSchedule(strength, start_percent, end_percent)
        raw = _encode_frames(vae, control)
        latents = model.model.process_latent_in(raw).to("cpu")
        patched = _with_emosh_wrapper(model)
        if lora_file is not None:
            import comfy.sd
            patched, _ = comfy.sd.load_lora_for_models(patched, None, read_safetensors(lora_file)[0], 1.0, 0)
        _set_transformer_option(patched, MOTION_KEY, MotionPatch(motion_adapter, latents, schedule, control.shape[0]))
        return io.NodeOutput(patched)


def _sampler_lists() -> tuple[list[str], list[str]]:
    try:
        import comfy.samplers
        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except ImportError:
        return ["euler"], ["simple"]


class EmoshSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        samplers, schedulers = _sampler_lists()
        return io.Schema(
            node_id="EmoshSampler",
            display_name="EMOSH Sampler",
            category=CATEGORY,
            description=("EMOSH chunked long-video sampler. Splits the video into overlapping chunks; each chunk is "
                         "denoised by ComfyUI's sampler (or the SAMPLER/SIGMAS you connect) with the reference "
                         "latent, the spatially-aligned latent (first frame of chunk 1) and the temporal latents (last "
                         "frames of the previous chunk) placed before it in time; chunks are cross-faded in the "
                         "overlaps."),
            inputs=[
                io.Model.Input("model", tooltip="A Wan model, usually patched by the Hybrid Motion Injector."),
                io.Conditioning.Input("positive", tooltip="Text conditioning (umT5) describing the video."),
                io.Conditioning.Input("negative", tooltip="Negative text conditioning."),
                io.Vae.Input("vae", tooltip="The Wan VAE: encodes reference/init frames and decodes the result."),
                io.Image.Input("reference", tooltip="The reference person, aligned to the control frames' size "
                                                    "(Spatial Align); only the first image is used."),
                io.Image.Input("control", tooltip="The whole control video; it sets the output length and size."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise of the whole video (shared by overlapping chunks)."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="Sampling steps per chunk (ignored when SIGMAS are connected)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=samplers,
                               tooltip="ComfyUI sampler (ignored when a SAMPLER is connected)."),
                io.Combo.Input("scheduler", options=schedulers,
                               tooltip="ComfyUI scheduler (ignored when SIGMAS are connected)."),
                io.Int.Input("chunk_frames", default=81, min=5, max=1001, step=4,
                             tooltip="Frames per chunk (4k+1 frames match Wan's latent grid)."),
                io.Int.Input("overlap_frames", default=8, min=0, max=1000, step=4,
                             tooltip="Frames shared by consecutive chunks and cross-faded."),
                io.Int.Input("temporal_latents", default=1, min=0, max=16,
                             tooltip="Latent frames (4 video frames each) of the previous chunk that condition the "
                                     "next chunk."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Below 1 the init video is kept partly (needs init_video)."),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="CLIP vision of the reference, for image-to-video Wan models."),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="A custom sampler (e.g. KSamplerSelect); replaces sampler_name."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Custom sigmas (e.g. BasicScheduler); replace steps/scheduler/denoise."),
                io.Image.Input("init_video", optional=True,
                               tooltip="A video to start from (e.g. the preview animator's output), same length and "
                                       "size as the control video."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The whole video latent."),
                io.Image.Output(display_name="images", tooltip="The decoded video frames."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, reference: torch.Tensor, control: torch.Tensor, seed: int,
                steps: int, cfg: float, sampler_name: str, scheduler: str, chunk_frames: int, overlap_frames: int,
                temporal_latents: int, denoise: float, clip_vision_output=None, sampler=None, sigmas=None,
                init_video: torch.Tensor | None = None) -> io.NodeOutput:
        import comfy.model_management
        import comfy.sample
        import comfy.utils
        import node_helpers

        check_video_inputs(control, reference, init_video)
        if (sampler is None) != (sigmas is None):
            raise InputError("Connect both SAMPLER and SIGMAS to use a custom sampler, or neither.")
        if denoise < 1.0 and init_video is None and sigmas is None:
            raise InputError("denoise < 1 keeps part of an init video: connect init_video, or set denoise to 1.")
        total = latent_frame_count(control.shape[0])
        motion: MotionPatch | None = model.model_options.get("transformer_options", {}).get(MOTION_KEY)
        if motion is None:
            log.warning("EMOSH Sampler: the MODEL has no Hybrid Motion Injector patch; sampling without motion.")
        elif motion.motion_latents.shape[2] != total:
            raise InputError(f"Frame count mismatch: control video has {control.shape[0]} frames but the Hybrid "
                             f"Motion Injector got {motion.pixel_frames}.")
        if clip_vision_output is not None:
            positive = node_helpers.conditioning_set_values(positive, {"clip_vision_output": clip_vision_output})
            negative = node_helpers.conditioning_set_values(negative, {"clip_vision_output": clip_vision_output})

        base = _with_emosh_wrapper(model)
        reference_latent = _encode_frames(vae, reference[:1]).to("cpu", torch.float32)
        init = _encode_frames(vae, init_video).to("cpu", torch.float32) if init_video is not None else None
        _, channels, _, h, w = reference_latent.shape
        noise = comfy.sample.prepare_noise(torch.zeros(1, channels, total, h, w), seed)
        progress = comfy.utils.ProgressBar(1)  # the chunk count arrives with the first update

        def on_step(*_args) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()

        def denoise_chunk(chunk, cond: ChunkConditioning, chunk_noise: torch.Tensor) -> torch.Tensor:
            comfy.model_management.throw_exception_if_processing_interrupted()
            cond = dataclasses.replace(cond, latents=model.model.process_latent_in(cond.latents))
            chunk_model = base.clone()
            _set_transformer_option(chunk_model, CHUNK_KEY, ChunkWindow(chunk.start, cond))
            latent_image = (init[:, :, chunk.start:chunk.stop] if init is not None
                            else torch.zeros_like(chunk_noise))
            if sampler is not None:
                samples = comfy.sample.sample_custom(chunk_model, chunk_noise, cfg, sampler, sigmas, positive,
                                                     negative, latent_image, callback=on_step, disable_pbar=True,
                                                     seed=seed)
            else:
                samples = comfy.sample.sample(chunk_model, chunk_noise, steps, cfg, sampler_name, scheduler,
                                              positive, negative, latent_image, denoise=denoise,
                                              force_full_denoise=True, callback=on_step, disable_pbar=True,
                                              seed=seed)
            return samples.to("cpu", torch.float32)

        latent = denoise_in_chunks(noise, reference_latent, chunk_frames, overlap_frames, denoise_chunk,
                                   temporal_latents, on_chunk=lambda done, count: progress.update_absolute(done, count),
                                   device="cpu")
        images = vae.decode(latent)
        images = images.reshape(-1, *images.shape[-3:])[: control.shape[0]]
        return io.NodeOutput({"samples": latent}, images)


NODES = [HybridMotionInjector, EmoshSampler]
