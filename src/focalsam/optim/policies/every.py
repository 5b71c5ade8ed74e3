"""``sam_every = k``: step ``i`` (counted from 0, saved in the state dict) is
sharpness-aware when ``i % k == 0``; the others take one pass with ``eps = 0``::

    g = grad (1/B) sum_n (a_n + b_n) l_n(theta)

``k = 1`` is the exact rule; ``k > 1`` approximates it in the spirit of periodic SAM.
"""

from __future__ import annotations

from typing import Any

from focalsam.optim.errors import StateDictError

#: The state-dict key of the step count that ``sam_every`` cycles on.
SAM_EVERY_KEY = "sam_every"


class SamEvery:
    """The step count of ``sam_every = every`` and whether this step is sharpness-aware."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.steps = 0

    def sharp_now(self) -> bool:
        """Whether the coming step perturbs: ``steps % every == 0``."""
        return self.steps % self.every == 0

    def advance(self) -> None:
        """Count a step taken."""
        self.steps += 1

    def save(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with the step count added when ``every > 1``."""
        if self.every != 1:
            state[SAM_EVERY_KEY] = {"steps": self.steps, "every": self.every}
        return state

    def read(self, state_dict: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``state_dict`` without the step count, and the count (0 when it holds none).
        Nothing is set here: the caller sets ``steps`` once the rest has loaded."""
        if not isinstance(state_dict, dict) or SAM_EVERY_KEY not in state_dict:
            return state_dict, 0
        state_dict = dict(state_dict)
        saved = state_dict.pop(SAM_EVERY_KEY)
        steps = saved.get("steps") if isinstance(saved, dict) else None
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise StateDictError(
                f"the state dict's {SAM_EVERY_KEY!r} must be a dict with a step count "
                f"'steps' >= 0, got {saved!r}"
            )
        return state_dict, steps
