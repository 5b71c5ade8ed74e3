"""The concerns around a step of the two-weight rule, each in its own module and each an
object or function the step calls with explicit arguments:

* :mod:`~focalsam.optim.policies.syncfree`: checks that never wait for the device
  (``strict_checks=False``) and the :class:`~focalsam.optim.policies.syncfree.SkipReport`;
* :mod:`~focalsam.optim.policies.accumulation`: one step over ``K`` micro-batches;
* :mod:`~focalsam.optim.policies.scaler`: the fp16 ``GradScaler`` and the base step;
* :mod:`~focalsam.optim.policies.ddp`: ``no_sync`` for the clean passes, the ascent all-reduce;
* :mod:`~focalsam.optim.policies.every`: ``sam_every``;
* :mod:`~focalsam.optim.policies.batchnorm`: BatchNorm statistics around the perturbed passes.
"""
