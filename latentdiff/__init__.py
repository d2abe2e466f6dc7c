"""latentdiff: the modern diffusion stack, end to end, readable and measured."""

__version__ = "0.1.0"
