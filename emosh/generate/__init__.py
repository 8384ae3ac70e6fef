"""EMOSH generation: motion adapter, chunk planning/latent assembly, and the diffusers host (``pipeline``)."""
from .adapter import InjectionSchedule, MotionAdapter, inject_motion
from .chunks import Chunk, ChunkAssembler, ChunkConditioning, plan_chunks

__all__ = ["Chunk", "ChunkAssembler", "ChunkConditioning", "InjectionSchedule", "MotionAdapter", "inject_motion",
           "plan_chunks"]
