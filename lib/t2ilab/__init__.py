"""t2ilab: train small text-to-image diffusion models and measure whether their images get better."""

__version__ = "0.1.0"
