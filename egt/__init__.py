"""egt: Entropy-Guided Training of multimodal reasoning reward models."""

__version__ = "0.1.0"
