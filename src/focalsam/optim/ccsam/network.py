"""CC-SAM's network mode as the group-wise rule: classes as groups, each with CC-SAM's
class-conditioned radius. ``CCSAM(mode="network")`` steps through it.

With ``k`` the classes present, ``g_c = grad mean_{i: y_i = c} l_i(theta)`` over all
trainable parameters (``P`` scalars, norm ``||w||``) and ``n_c`` the class's training
count (:func:`~focalsam.optim.ccsam.radius.ccsam_radius`)::

    rho_c = rho * sqrt(||w|| / ||g_c||) * P ** (1/4) / (sqrt(2) * (n_c - 1) ** (1/4))
    eps_c = rho_c * g_c / ||g_c||
    g     = (1 - f) grad (1/B) sum_i l_i(theta) + f sum_c grad L_c(theta + eps_c)

which is :class:`~focalsam.optim.groupwise.GroupwiseSAM` with one group per class,
``clean_weight = 1 - f`` and ``group_weight = f``: ``grad L_c = (n_c^batch / B) g_c``
has the direction of ``g_c``, and the radius takes the norm of the class mean
``||g_c|| = (B / n_c^batch) ||grad L_c||``. With ``per_tensor=True`` each parameter
tensor has its own ``g_c`` norm, radius and direction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.ascent import TINY
from focalsam.optim.ccsam.radius import NO_ACCUMULATION, NO_SYNC_FREE, ccsam_radius
from focalsam.optim.class_weights import ClassCounts
from focalsam.optim.errors import AccumulationError, InvalidHyperparameterError
from focalsam.optim.groupwise import GroupwiseSAM
from focalsam.optim.validators import validate_ccsam_counts


class ClassConditionedRadius:
    """CC-SAM's radius per class (group): ``sqrt(||w|| / ||g_c||) P^(1/4) /
    (sqrt(2) (n_c - 1)^(1/4))``, times the parameter group's ``rho`` in the engine (one
    per tensor when ``grad_norm`` holds one norm per tensor). It takes the class's
    mean gradient, ``||g_c|| = (B / n_c^batch) ||grad L_c||``, so it needs the class's
    count in the batch: not sync-free."""

    sync_free = False

    def __init__(self, class_counts: Tensor) -> None:
        self.counts: list[float] = class_counts.tolist()

    def active(self, group: int) -> bool:
        return True

    def radius(
        self,
        group: int,
        grad_norm: Tensor,
        size: int | None,
        batch: int | None,
        params: list[Tensor],
    ) -> Tensor:
        if size is None or batch is None:
            raise InvalidHyperparameterError(
                "CC-SAM's class-conditioned radius needs the class's sample count in the "
                "batch: it runs in strict steps only"
            )
        norms = torch._foreach_norm([p.detach() for p in params])
        param_norm = torch.linalg.vector_norm(torch.stack(norms)) + TINY
        num = sum(p.numel() for p in params)
        class_mean_norm = grad_norm * (batch / size) + TINY
        r = ccsam_radius(1.0, param_norm, class_mean_norm, self.counts[group], num)
        assert isinstance(r, Tensor)
        return r


class GroupwiseCCSAM(GroupwiseSAM):
    """CC-SAM stage 1, network mode, through the group-wise engine.

    ``g = (1 - f) grad mean(l)(theta) + f sum_c grad L_c(theta + eps_c)`` with CC-SAM's
    class-conditioned ``eps_c`` (module docstring). ``rho``: the radius scale (the public
    code's ``noise_ratio``), per parameter group; ``flat_ratio``: ``f`` in ``[0, 1]``;
    ``class_counts``: training samples per class, each >= 2. Other options are the
    group-wise engine's (``model``, ``bn_update``, ``ascent_all_reduce``,
    ``max_grad_norm``, ``per_tensor``, ``check_finite``, ``strict_checks``,
    ``sam_every``) and the base optimizer's. Its steps are always strict and
    ``strict_checks=False`` is refused: the radius takes each class's count in the batch,
    read on the host, and a sync-free step would have to run the passes of every class of
    the dataset whatever the batch holds (100 perturbed passes per step on CIFAR-100).
    :meth:`step_accumulated` is refused: exact accumulation would hold one gradient
    buffer the size of the model per class present in the batch.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
        ...                             torch.nn.Linear(6, 3))
        >>> opt = GroupwiseCCSAM(model.parameters(), class_counts=[50, 10, 3], rho=0.05,
        ...                      flat_ratio=0.5, lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])
        >>> _ = opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y,
        ...                                                        reduction="none"), y)
        >>> opt.passes_per_step()  # 1 + 3 forward, 2 * 3 + 1 backward passes
        (4.0, 7.0)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        class_counts: ClassCounts,
        num_classes: int | None = None,
        rho: float = 1e-6,
        flat_ratio: float = 0.5,
        **kwargs: Any,
    ) -> None:
        if (
            isinstance(flat_ratio, bool)
            or not isinstance(flat_ratio, int | float)
            or not 0 <= flat_ratio <= 1
        ):
            raise InvalidHyperparameterError(f"flat_ratio must lie in [0, 1], got {flat_ratio!r}")
        if kwargs.get("strict_checks") is False:
            raise InvalidHyperparameterError(NO_SYNC_FREE)
        self.class_counts = validate_ccsam_counts(class_counts, num_classes)
        self.flat_ratio = float(flat_ratio)
        super().__init__(
            params,
            base_optimizer,
            group_of=torch.arange(self.class_counts.numel()),
            radius=ClassConditionedRadius(self.class_counts),
            clean_weight=1.0 - self.flat_ratio,
            group_weight=self.flat_ratio,
            rho=rho,
            **kwargs,
        )

    def step_accumulated(self, micro: Any, **kwargs: Any) -> list[Any]:
        """Refused (:class:`AccumulationError`): see the class docstring."""
        raise AccumulationError(NO_ACCUMULATION)


__all__ = ["ClassConditionedRadius", "GroupwiseCCSAM"]
