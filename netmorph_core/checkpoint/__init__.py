"""Checkpoint-to-checkpoint growth of Hugging Face models in bounded memory.

:func:`grow_checkpoint` reads a checkpoint directory lazily and writes the grown child's
checkpoint shard by shard (:mod:`.grow`; reading and writing in :mod:`.io`, the one-block
models the operations run on in :mod:`.pieces`). Importing this subpackage imports torch.
"""

from .grow import BlockCheck, GrowthSummary, grow_checkpoint
from .io import CheckpointError

__all__ = ["BlockCheck", "CheckpointError", "GrowthSummary", "grow_checkpoint"]
