"""EMOSH generation nodes against a real ComfyUI (skipped unless COMFYUI_PATH points at a checkout).

A tiny random-weight Wan 2.1 DiT in ComfyUI's native key layout and a random Wan 2.1 VAE are written as
safetensors, loaded by the stock UNETLoader/VAELoader, patched by the Hybrid Motion Injector and sampled by stock
KSampler, by SamplerCustomAdvanced and by the EMOSH Sampler over several chunks. Runs in-process on CPU.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import torch

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout to run these")
REPO = Path(__file__).resolve().parents[2]
FRAMES, HEIGHT, WIDTH = 21, 32, 32
DIM = 128
ADAPTER = "tiny_adapter/diffusion_pytorch_model.safetensors"  # how ComfyUI lists the adapter folder's weights


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI imported in-process on CPU, with model folders in a temp dir and our node module loaded."""
    sys.path.insert(0, COMFYUI_PATH)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import folder_paths
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    root = tmp_path_factory.mktemp("comfy_models")
    for name in ("diffusion_models", "vae", "emosh"):
        (root / name).mkdir()
        folder_paths.add_model_folder_path(name, str(root / name), is_default=True)
    _write_tiny_models(root)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # for emosh.* helpers used by the tests themselves
    assert asyncio.run(nodes.load_custom_node(str(REPO), set(nodes.NODE_CLASS_MAPPINGS))), "pack failed to load"
    injector = nodes.NODE_CLASS_MAPPINGS["EmoshHybridMotionInjector"]
    module = sys.modules[injector.__module__]  # our nodes/generate.py as ComfyUI imported it
    return {"nodes": nodes, "gen": module, "root": root}


def _write_tiny_models(root: Path) -> None:
    import comfy.ldm.wan.model
    import comfy.ldm.wan.vae
    import comfy.ops
    from safetensors.torch import save_file

    torch.manual_seed(0)
    dit = comfy.ldm.wan.model.WanModel(dim=DIM, ffn_dim=256, num_heads=1, num_layers=2, text_dim=4096, freq_dim=256,
                                       operations=comfy.ops.manual_cast)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.05)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(root / "diffusion_models" / "tiny_wan.safetensors"))
    vae = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    with torch.no_grad():
        for name, p in vae.named_parameters():  # ComfyUI layers are created uninitialised
            if p.ndim > 1:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0 if "gamma" in name else 0.0)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(root / "vae" / "tiny_wan_vae.safetensors"))
    from emosh.generate.adapter import MotionAdapter

    adapter = MotionAdapter(DIM)
    with torch.no_grad():
        adapter.proj.weight.normal_(0.0, 0.2)
    adapter.save_pretrained(root / "emosh" / "tiny_adapter")


def _control_video() -> torch.Tensor:
    t = torch.linspace(0, 1, FRAMES).view(-1, 1, 1, 1)
    y = torch.linspace(0, 1, HEIGHT).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, WIDTH).view(1, 1, -1, 1)
    return torch.cat([(x + t).frac().expand(FRAMES, HEIGHT, WIDTH, 1), y.expand(FRAMES, HEIGHT, WIDTH, 1),
                      (x * y + t).clamp(0, 1).expand(FRAMES, HEIGHT, WIDTH, 1)], dim=-1)


def _load(comfy):
    nodes = comfy["nodes"]
    model = nodes.UNETLoader().load_unet("tiny_wan.safetensors", "default")[0]
    vae = nodes.VAELoader().load_vae("tiny_wan_vae.safetensors")[0]
    torch.manual_seed(1)
    positive = [[torch.randn(1, 8, 4096), {}]]
    negative = [[torch.randn(1, 8, 4096), {}]]
    return model, vae, positive, negative


def _empty_latent(frames: int = FRAMES) -> dict:
    return {"samples": torch.zeros(1, 16, (frames - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)}


def test_stock_samplers_with_injector(comfy):
    nodes, gen = comfy["nodes"], comfy["gen"]
    model, vae, positive, negative = _load(comfy)
    assert type(model.model).__name__ == "WAN21"
    control = _control_video()
    patched = gen.HybridMotionInjector.execute(model, vae, control, 1.0, 0.0, 1.0, ADAPTER)[0]
    assert patched is not model
    ksampler = nodes.KSampler()
    args = dict(seed=3, steps=3, cfg=3.0, sampler_name="euler", scheduler="simple", positive=positive,
                negative=negative, latent_image=_empty_latent(), denoise=1.0)
    base = ksampler.sample(model, **args)[0]["samples"]
    injected = ksampler.sample(patched, **args)[0]["samples"]
    base_again = ksampler.sample(model, **args)[0]["samples"]
    assert torch.isfinite(injected).all()
    assert (injected - base).abs().max() > 1e-3, "motion injection had no effect"
    assert torch.equal(base, base_again), "the upstream MODEL was modified by the injector"

    from comfy_extras.nodes_custom_sampler import (BasicScheduler, CFGGuider, KSamplerSelect, RandomNoise,
                                                   SamplerCustomAdvanced)

    guider = CFGGuider().get_guider(patched, positive, negative, 3.0)[0]
    sampler = KSamplerSelect().get_sampler("euler")[0]
    sigmas = BasicScheduler().get_sigmas(patched, "simple", 3, 1.0)[0]
    noise = RandomNoise().get_noise(3)[0]
    custom = SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, _empty_latent())[0]["samples"]
    assert torch.allclose(custom, injected, atol=1e-5), (custom - injected).abs().max()

    zero = gen.HybridMotionInjector.execute(model, vae, control, 0.0, 0.0, 1.0, ADAPTER)[0]
    assert torch.equal(ksampler.sample(zero, **args)[0]["samples"], base), "strength 0 must leave the model as is"
    never = gen.HybridMotionInjector.execute(model, vae, control, 1.0, 0.5, 0.5, ADAPTER)[0]
    assert torch.equal(ksampler.sample(never, **args)[0]["samples"], base), "an empty step range must not inject"
    late = gen.HybridMotionInjector.execute(model, vae, control, 1.0, 0.5, 1.0, ADAPTER)[0]
    late_out = ksampler.sample(late, **args)[0]["samples"]
    assert not torch.equal(late_out, base) and not torch.equal(late_out, injected), "start_percent is ignored"


def test_injector_frame_count_mismatch(comfy):
    nodes, gen = comfy["nodes"], comfy["gen"]
    model, vae, positive, negative = _load(comfy)
    patched = gen.HybridMotionInjector.execute(model, vae, _control_video()[:9], 1.0, 0.0, 1.0,
                                               ADAPTER)[0]
    with pytest.raises(Exception, match="Frame count mismatch"):
        nodes.KSampler().sample(patched, 3, 2, 3.0, "euler", "simple", positive, negative, _empty_latent(), 1.0)
    with pytest.raises(Exception, match="not a Wan-Animate model"):
        gen.HybridMotionInjector.execute(model, vae, _control_video(), 1.0, 0.0, 1.0,
                                         gen.USE_ANIMATE_EMBEDDING)


def test_emosh_sampler_chunks(comfy):
    gen = comfy["gen"]
    model, vae, positive, negative = _load(comfy)
    control = _control_video()
    reference = control[:1].flip(2)
    patched = gen.HybridMotionInjector.execute(model, vae, control, 1.0, 0.0, 1.0, ADAPTER)[0]
    sampler = gen.EmoshSampler
    args = dict(seed=5, steps=3, cfg=3.0, sampler_name="euler", scheduler="simple", chunk_frames=9,
                overlap_frames=4, temporal_latents=1, denoise=1.0)
    from emosh.generate.chunks import pixel_to_latent_chunking, plan_chunks

    chunks = plan_chunks((FRAMES - 1) // 4 + 1, *pixel_to_latent_chunking(9, 4))
    assert len(chunks) >= 3
    latent, images = sampler.execute(patched, positive, negative, vae, reference, control, **args)
    assert latent["samples"].shape == (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert images.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert torch.isfinite(latent["samples"]).all()
    again, _ = sampler.execute(patched, positive, negative, vae, reference, control, **args)
    assert torch.equal(again["samples"], latent["samples"]), "EMOSH Sampler is not deterministic for a seed"

    from comfy_extras.nodes_custom_sampler import BasicScheduler, KSamplerSelect

    custom_sampler = KSamplerSelect().get_sampler("euler")[0]
    sigmas = BasicScheduler().get_sigmas(patched, "simple", 3, 1.0)[0]
    custom, _ = sampler.execute(patched, positive, negative, vae, reference, control, sampler=custom_sampler,
                               sigmas=sigmas, **args)
    assert torch.allclose(custom["samples"], latent["samples"], atol=1e-5)

    with pytest.raises(Exception, match="Frame count mismatch"):
        sampler.execute(patched, positive, negative, vae, reference, control[:17], **args)
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sampler.execute(patched, positive, negative, vae, reference, control, **args)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    with pytest.raises(Exception, match="Wrong size"):
        sampler.execute(patched, positive, negative, vae, reference[:, :16], control, **args)


def test_diffusers_host_loads_native_single_file(comfy):
    """The ComfyUI-layout file converts to a diffusers transformer that computes what ComfyUI's WanModel computes."""
    path = comfy["root"] / "diffusion_models" / "tiny_wan.safetensors"
    import comfy.ldm.wan.model
    import comfy.ops
    from safetensors.torch import load_file

    from emosh.generate.loaders import load_transformer

    native = comfy.ldm.wan.model.WanModel(dim=DIM, ffn_dim=256, num_heads=1, num_layers=2, text_dim=4096,
                                          freq_dim=256, operations=comfy.ops.manual_cast)
    native.load_state_dict(load_file(str(path)))
    converted = load_transformer(path).eval()
    x, context, t = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 8, 4096), torch.tensor([700.0])
    with torch.no_grad():
        expected = native(x, t, context)
        got = converted(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_wan_animate_model_uses_its_pose_patch_embedding(comfy):
    """A native Wan-Animate MODEL needs no adapter file: its own pose_patch_embedding takes the motion latents."""
    nodes, gen, root = comfy["nodes"], comfy["gen"], comfy["root"]
    _, vae, positive, negative = _load(comfy)
    import comfy.ldm.wan.model_animate
    import comfy.ops
    from safetensors.torch import save_file

    torch.manual_seed(2)
    animate = comfy.ldm.wan.model_animate.AnimateWanModel(dim=DIM, ffn_dim=256, num_heads=1, num_layers=5, in_dim=36,
                                                          text_dim=4096, freq_dim=256, operations=comfy.ops.manual_cast)
    with torch.no_grad():
        for name, p in animate.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.05)
    save_file({k: v.contiguous() for k, v in animate.state_dict().items()},
              str(root / "diffusion_models" / "tiny_wan_animate.safetensors"))
    model = nodes.UNETLoader().load_unet("tiny_wan_animate.safetensors", "default")[0]
    assert type(model.model).__name__ == "WAN22_Animate"
    control = _control_video()
    patched = gen.HybridMotionInjector.execute(model, vae, control, 1.0, 0.0, 1.0, gen.USE_ANIMATE_EMBEDDING)[0]
    args = dict(seed=3, steps=2, cfg=3.0, sampler_name="euler", scheduler="simple", positive=positive,
                negative=negative, latent_image=_empty_latent(), denoise=1.0)
    base = nodes.KSampler().sample(model, **args)[0]["samples"]
    injected = nodes.KSampler().sample(patched, **args)[0]["samples"]
    assert torch.isfinite(injected).all() and (injected - base).abs().max() > 1e-3
    latent, images = gen.EmoshSampler.execute(patched, positive, negative, vae, control[:1], control, seed=1, steps=2,
                                              cfg=3.0, sampler_name="euler", scheduler="simple", chunk_frames=13,
                                              overlap_frames=4, temporal_latents=1, denoise=1.0)
    assert torch.isfinite(latent["samples"]).all() and images.shape == (FRAMES, HEIGHT, WIDTH, 3)
