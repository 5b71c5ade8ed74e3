"""focalsam's optimizers where people already train.

* :mod:`focalsam.integrations.transformers`: a Hugging Face ``Trainer`` whose optimizer
  step is one step of a focalsam optimizer (needs the ``hf`` extra).
* :mod:`focalsam.integrations.soft_targets`: per-sample losses of soft targets (Mixup,
  CutMix, label smoothing) that keep the class weights exact.
* :mod:`focalsam.integrations.fsdp`: checks for models sharded with FSDP2
  (``torch.distributed.fsdp.fully_shard``).

Each submodule is imported on its own, so this package needs nothing beyond torch.
"""
