"""Checkpoints (safetensors + JSON config) and image files."""
