"""Test stand-in for ComfyUI's ``comfy_api`` (only on sys.path when no real ComfyUI is, see tests/conftest.py)."""
