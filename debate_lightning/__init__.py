"""debate_lightning: AI-debate research on PyTorch Lightning."""

__version__ = "0.1.0"
