"""latentvid: text-to-video latent diffusion on PyTorch Lightning."""

__version__ = "0.1.0"
