"""A Hugging Face ``Trainer`` whose every optimizer step is one step of a focalsam optimizer.

The ``Trainer`` runs one forward and one backward pass per micro-batch and then calls
``optimizer.step()``; a sharpness-aware step needs the forward pass again at
``theta + eps``. :class:`SharpnessAwareTrainer` keeps the Trainer's loop, data, lr
schedule, logging, checkpoints and resume, and moves the whole step into
``training_step``:

* the micro-batches of one optimizer step (``gradient_accumulation_steps``) are held
  until the last one arrives, then go to
  :meth:`~focalsam.optim.WeightedSAM.step_accumulated` together: one ascent over the
  whole accumulated batch, exactly the step on their concatenation;
* per-sample losses are the cross-entropy of the model's ``logits`` against
  ``labels`` (classification heads), or ``loss_fn(outputs, labels)`` for other models;
* clipping (``args.max_grad_norm``) and fp16's GradScaler go through the optimizer's
  own step; bf16 and fp16 autocast are the Trainer's;
* under DDP (``torchrun`` or ``accelerate launch``) the optimizer is given the wrapped
  model, so the clean passes skip their all-reduce.

The ``Trainer`` sees a stand-in optimizer (:class:`TakenStep`) whose ``step()`` does
nothing (the step was taken in ``training_step``) and which shares parameter groups,
state and state dict with the focalsam optimizer, so lr schedulers and checkpoints
work on it unchanged.

Needs the ``hf`` extra: ``pip install 'focalsam[hf]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

try:
    from transformers import PreTrainedModel, Trainer
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "focalsam.integrations.transformers needs the hf extra: pip install 'focalsam[hf]'"
    ) from exc

from focalsam.optim import WeightedSAM, get_method
from focalsam.optim import create_optimizer as create_focalsam_optimizer
from focalsam.optim.errors import InvalidHyperparameterError, LabelError

#: ``loss_fn(outputs, labels) -> losses (B,)``: per-sample losses of a model's outputs.
LossFn = Callable[[Any, Tensor], Tensor]

_LABEL_KEYS = ("labels", "label")


class TakenStep(Optimizer):
    """What the ``Trainer`` steps: ``step()`` does nothing, because
    :meth:`SharpnessAwareTrainer.training_step` already took the step with
    ``sam``; parameter groups, state and state dict are ``sam``'s."""

    def __init__(self, sam: WeightedSAM) -> None:
        Optimizer.__init__(self, [{"params": [torch.zeros(())]}], {})
        self.sam = sam
        self.param_groups = sam.param_groups
        self.state = sam.state
        self.defaults = sam.defaults

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        """Nothing: the step was taken in ``training_step``."""
        if closure is not None:
            raise InvalidHyperparameterError(
                "TakenStep.step takes no closure: the sharpness-aware step runs in "
                "SharpnessAwareTrainer.training_step"
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sam.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.sam.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sam.load_state_dict(state_dict)
        self.param_groups = self.sam.param_groups
        self.state = self.sam.state


def dataset_class_counts(dataset: Any, num_classes: int) -> list[int]:
    """Samples per class ``n_i`` of a training set: from its ``labels`` (or ``label``)
    column when it has one (``datasets.Dataset``), else from each item's
    ``item["labels"]`` (or ``item["label"]``)."""
    labels: Any = None
    for key in _LABEL_KEYS:
        names = getattr(dataset, "column_names", None)
        if names is not None and key in names:
            labels = dataset[key]
            break
    if labels is None:
        labels = [_item_label(item, i) for i, item in enumerate(dataset)]
    y = torch.as_tensor(labels).long().flatten()
    if y.numel() == 0:
        raise LabelError("the training set is empty: no labels to count classes from")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise LabelError(
            f"training labels must lie in [0, {num_classes}) (the model's num_labels); got "
            f"values in [{int(y.min())}, {int(y.max())}]"
        )
    return torch.bincount(y, minlength=num_classes).tolist()


def _item_label(item: Any, index: int) -> Any:
    if isinstance(item, dict):
        for key in _LABEL_KEYS:
            if key in item:
                label = item[key]
                return int(label) if isinstance(label, Tensor) else label
    raise LabelError(
        f"item {index} of the training set has no 'labels' or 'label' entry: pass "
        "class_counts= to SharpnessAwareTrainer"
    )


class SharpnessAwareTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with a focalsam optimizer.

    The update of one optimizer step over micro-batches ``k`` (``B = sum B_k``) is
    the rule of :class:`~focalsam.optim.WeightedSAM` on their concatenation:
    ``g = grad (1/B) sum_n a_n l_n(theta) + grad (1/B) sum_n b_n l_n(theta + eps)``.

    Args:
        *args, **kwargs: the ``Trainer``'s (model, args, train_dataset, ...). An
            ``optimizers=(opt, scheduler)`` pair may hold a focalsam optimizer built by
            hand; else one is built from the options below.
        optimizer: a registered focalsam optimizer name (``"focal_sam"``, ``"sam"``,
            ``"imbsam"``, ``"plain"``, ...).
        optimizer_options: its options (``rho``, ``gamma``, ``lam``, ``adaptive``, ...)
            and the base optimizer's (they override the ones taken from ``args``).
        base_optimizer: ``"adamw"`` (the Trainer's default), ``"sgd"``, ... or a class.
            ``lr`` is ``args.learning_rate``; weight decay ``args.weight_decay`` except on
            biases and norm layers (the Trainer's own grouping); AdamW also takes
            ``args.adam_beta1``, ``adam_beta2``, ``adam_epsilon``.
        class_counts: training samples per class, for methods that weight classes;
            default: counted from ``train_dataset``'s labels.
        loss_fn: ``loss_fn(outputs, labels) -> (B,)`` per-sample losses; default the
            cross-entropy of ``outputs.logits``.
    """

    def __init__(
        self,
        *args: Any,
        optimizer: str = "focal_sam",
        optimizer_options: dict[str, Any] | None = None,
        base_optimizer: str | type[Optimizer] = "adamw",
        class_counts: Sequence[int] | None = None,
        loss_fn: LossFn | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer_name = optimizer
        self.optimizer_options = dict(optimizer_options or {})
        self.base_optimizer = base_optimizer
        self.class_counts = None if class_counts is None else list(class_counts)
        self.loss_fn = loss_fn
        get_method(optimizer)  # an unknown name fails here, before any training
        self.sam: WeightedSAM | None = None
        self._held: list[dict[str, Any]] = []
        if isinstance(self.optimizer, WeightedSAM):  # built by hand, given in optimizers=
            self.sam = self.optimizer
            self.optimizer = TakenStep(self.sam)
        elif self.optimizer is not None and not isinstance(self.optimizer, TakenStep):
            raise InvalidHyperparameterError(
                "SharpnessAwareTrainer needs a focalsam optimizer (a WeightedSAM such as "
                f"FocalSAM or SAM) in optimizers=, got {type(self.optimizer).__name__}"
            )

    # ----------------------------------------------------------- optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> Optimizer:
        """Build the focalsam optimizer (once) and hand the Trainer its stand-in."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if opt_model is None:
                raise InvalidHyperparameterError("SharpnessAwareTrainer needs a model")
            self.sam = self._build_sam(opt_model)
            self.optimizer = TakenStep(self.sam)
        return self.optimizer

    def _build_sam(self, model: nn.Module) -> WeightedSAM:
        args = self.args
        decay = set(self.get_decay_parameter_names(model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        options: dict[str, Any] = {"lr": args.learning_rate}
        if self.base_optimizer in ("adamw", "adam", torch.optim.AdamW, torch.optim.Adam):
            options.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        if args.max_grad_norm is not None and args.max_grad_norm > 0:
            options["max_grad_norm"] = args.max_grad_norm
        if get_method(self.optimizer_name).needs_class_counts:
            options["class_counts"] = self._class_counts(model)
        options.update(self.optimizer_options)
        sam = create_focalsam_optimizer(self.optimizer_name, groups, self.base_optimizer, **options)
        if not isinstance(sam, WeightedSAM):
            raise InvalidHyperparameterError(
                f"optimizer {self.optimizer_name!r} is not a two-weight rule (WeightedSAM); "
                "SharpnessAwareTrainer runs FocalSAM, SAM, ImbSAM and the plain optimizer"
            )
        return sam

    def _class_counts(self, model: nn.Module) -> list[int]:
        if self.class_counts is not None:
            return self.class_counts
        num_classes = getattr(getattr(model, "config", None), "num_labels", None)
        if self.train_dataset is None or num_classes is None:
            raise InvalidHyperparameterError(
                f"{self.optimizer_name} weights classes: pass class_counts= (or a "
                "train_dataset with labels and a model whose config has num_labels)"
            )
        self.class_counts = dataset_class_counts(self.train_dataset, int(num_classes))
        return self.class_counts

    # ----------------------------------------------------------------- step
    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Any = None,
    ) -> Tensor:
        """Hold this micro-batch; on the last one of an optimizer step, take the step
        over all of them. Returns this micro-batch's share of the step's mean loss
        (0 for the held ones, the whole mean on the last), as the Trainer sums them."""
        model.train()
        self._held.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        held, self._held = self._held, []
        sam = self.sam
        assert sam is not None, "create_optimizer builds the focalsam optimizer first"
        if hasattr(model, "no_sync"):
            sam.model = model  # DDP: the clean passes skip their all-reduce
        self._leave_scaler_to_us()
        micro = [self._micro_batch(model, batch) for batch in held]
        outs = sam.step_accumulated(micro, scaler=self.accelerator.scaler)
        losses = torch.cat([o[0] if isinstance(o, tuple) else o for o in outs])
        return losses.mean().detach()

    def _micro_batch(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[Callable[[], Tensor], Tensor | None]:
        inputs = dict(batch)
        labels = next((inputs.pop(k) for k in _LABEL_KEYS if k in inputs), None)
        loss_fn = self.loss_fn

        def closure() -> Tensor:
            with self.compute_loss_context_manager():
                outputs = model(**inputs)
            if loss_fn is not None:
                return loss_fn(outputs, labels)  # type: ignore[arg-type]
            if labels is None:
                raise LabelError(
                    "the batch has no 'labels': give the Trainer labelled data, or a "
                    "loss_fn(outputs, labels) for a model without class labels"
                )
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
            return F.cross_entropy(logits.float(), labels, reduction="none")

        return closure, labels

    def _leave_scaler_to_us(self) -> None:
        """fp16: the focalsam step unscales, checks for inf/NaN, steps and updates the
        GradScaler; the Trainer's optimizer wrapper must not step or update it again."""
        if getattr(self.optimizer, "scaler", None) is not None:
            self.optimizer.scaler = None  # type: ignore[union-attr]

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load the model's weights from a checkpoint of this Trainer.

        transformers 5's ``Trainer`` loads a checkpoint's weights file with a plain
        ``load_state_dict(strict=False)``, while ``save_pretrained`` wrote some models'
        weights (ViT's among them) under their older names: nothing would load, with
        only a warning. A :class:`~transformers.PreTrainedModel` is therefore loaded
        through ``from_pretrained``, which maps the names back, and copied in strictly.
        """
        target = self.model if model is None else model
        config = os.path.join(resume_from_checkpoint, "config.json")
        if not isinstance(target, PreTrainedModel) or not os.path.isfile(config):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        saved = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(saved.state_dict(), strict=True)

    def _clip_grad_norm(self, model: nn.Module) -> None:
        """Clipping is the focalsam step's (``max_grad_norm``), before its base step."""
        return None

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        return grad_norm
