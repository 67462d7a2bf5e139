"""The Fine-tune widget's regression gate: a new version that scores worse than
the previous one is saved but not used until the user chooses.

A mixin of :class:`.finetune.FinetuneWidget`; it expects ``store``,
``gate_status``, ``gate_row``, ``use_new_button``, ``keep_old_button``,
``status``, ``_pending`` and ``_apply`` on the widget.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GateMixin"]


class GateMixin:
    """Show the gate's choice and act on it."""

    @staticmethod
    def _promoted(decision: Any) -> bool:
        if decision is None:
            return True
        return bool(decision.promoted)

    @staticmethod
    def _gate_numbers(outcome: Any) -> tuple[float | None, float | None, str]:
        """(previous, new, what) as the gate compared them."""
        decision, result = outcome.decision, outcome.result
        before = getattr(decision, "val_dice_previous", None)
        after = getattr(decision, "val_dice_candidate", None)
        metric = getattr(decision, "metric", "")
        if before is None and after is None and result is not None:
            after, before, metric = result.gate_scores()
        return before, after, metric

    def _show_gate(self, visible: bool) -> None:
        for widget in (self.gate_status, self.gate_row, self.use_new_button, self.keep_old_button):
            widget.visible = visible

    def use_candidate(self, *_: Any) -> None:
        """Use the version the regression gate held back, as the user chose."""
        if self._pending is None:
            return
        outcome, self._pending = self._pending, None
        self._show_gate(False)
        self.store.rollback(outcome.version.id)
        self._apply(outcome)

    def keep_previous(self, *_: Any) -> None:
        """Keep the previous model and the labels as they are."""
        if self._pending is None:
            return
        name = self._pending.version.id
        self._pending = None
        self._show_gate(False)
        self.status.value = f"kept the previous model; '{name}' stays in the version list"
