"""focalsam's optimizers where people already train.

* :mod:`focalsam.integrations.transformers`: a Hugging Face ``Trainer`` whose optimizer
  step is one step of a focalsam optimizer (needs the ``hf`` extra).
* :mod:`focalsam.integrations.soft_targets`: losses of soft targets (Mixup, CutMix,
  label smoothing) that class-weighted optimizers weight class by class.

Models sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) need no wrapper: the
optimizers take their DTensor parameters as they are.

Each submodule is imported on its own, so this package needs nothing beyond torch.
"""
