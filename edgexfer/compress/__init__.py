"""Compression stages: distill (in ``edgexfer.compress.distill``), prune, quantize (QAT/PTQ).

Importing this package imports no TensorFlow; the stages import it when they run.
"""

from edgexfer.compress.config import DistillConfig, PruneConfig, QuantizeConfig

__all__ = ["DistillConfig", "PruneConfig", "QuantizeConfig"]
