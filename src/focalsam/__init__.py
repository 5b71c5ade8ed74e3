"""focalsam: Focal-SAM and other sharpness-aware optimizers for long-tailed classification."""

__version__ = "0.1.0"
