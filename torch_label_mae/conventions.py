"""What a completer's labels mean: its label set (if any), class names, class-id range, and the missing
index, void index and colour table a completion uses when the caller leaves them out.

:class:`LabelConventions` is a mixin of :class:`~torch_label_mae.completer.LabelCompleter` (which has a
``config``); class-specific models keep their own classes and the old defaults (holes 255, no void, no
table), a class-agnostic model takes a :class:`~torch_label_mae.label_sets.LabelSet`.
"""

from __future__ import annotations

from .colors import ColorTable, load_colors
from .config import LMAEConfig
from .inputs import check_indices
from .label_sets import LabelSet, load_label_set, resolve_indices


class LabelConventions:
    """The label set, class names, id range and completion defaults of a model with ``config``."""

    config: LMAEConfig
    pretrained_name: str | None = None  # the registered name it was loaded by (``from_pretrained``), for messages
    _label_set: LabelSet | None = None  # none until set

    @property
    def label_set(self) -> LabelSet | None:
        """A class-agnostic completer's dataset conventions (a :class:`~torch_label_mae.label_sets.LabelSet`:
        class names, colours, missing and void indices; ids outside it are refused). Set by
        ``from_pretrained("voc-m0.5")``, or by hand: a LabelSet, a name of ``LABEL_SETS`` or None (any ids)."""
        return self._label_set

    @label_set.setter
    def label_set(self, value) -> None:
        value = load_label_set(value)
        if value is not None and not self.config.class_agnostic:
            raise ValueError("a label set is for class-agnostic models; this model has its own classes")
        self._label_set = value

    @property
    def class_names(self) -> list[str] | None:
        """The names of the class ids: the label set's, else the model's (``config.class_names``), else None."""
        return list(self.label_set.class_names) if self.label_set is not None else self.config.class_names

    def conventions(
        self, missing_index: int | None = None, void_index: int | None = None, colors=None, uses_missing_index=True
    ) -> tuple[int, int | None, ColorTable | None]:
        """``(missing_index, void_index, colour table)`` of a completion given these arguments: each one
        given, else the :attr:`label_set`'s (:func:`~torch_label_mae.label_sets.resolve_indices`; its
        colour table), else 255, no void and no table. Checked: integers, a void index that is no class id
        and differs from the missing index (unless maps mark the holes: ``uses_missing_index=False``), a
        colour table with a colour for every class of a class-specific model."""
        missing_index, void_index = resolve_indices(self.label_set, missing_index, void_index)
        table = load_colors(colors if colors is not None or self.label_set is None else self.label_set.colors)
        check_indices(missing_index, void_index, self.num_ids or 0, uses_missing_index)
        if table is not None and not self.config.class_agnostic and table.num_classes < self.config.num_classes:
            raise ValueError(
                f"colour table {table.name!r} has {table.num_classes} class colours but the model has "
                f"{self.config.num_classes} classes; every class needs a colour"
            )
        return missing_index, void_index, table

    @property
    def num_ids(self) -> int | None:
        """Class ids of labels lie in ``[0, num_ids)``: the label set's, else the model's classes; None for
        a class-agnostic completer without label set (any id >= 0 but the model's ignore index)."""
        if self.label_set is not None:
            return self.label_set.num_classes
        return None if self.config.class_agnostic else self.config.num_classes
