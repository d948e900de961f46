"""Multi-ratio routing: each sample goes to the model whose ``mask_ratio`` is nearest the fraction of
patches it hides (the paper trains one model per ratio)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .masking import hidden_from_missing


def check_members(members: Sequence) -> list:
    """``members`` (anything with a ``config``) sorted by ratio; they must share ``num_classes``."""
    if isinstance(members, (str, bytes)) or hasattr(members, "config"):
        raise TypeError(f"routed() takes a list of loaded completers, got {type(members).__name__} {members!r}")
    for m in members:
        if not hasattr(m, "config"):
            raise TypeError(
                f"routed() takes loaded completers, got {type(m).__name__} {m!r}: load each with "
                "LabelCompleter.from_pretrained, or pass a family name to from_pretrained (e.g. 'any')"
            )
    members = sorted(members, key=lambda m: m.config.mask_ratio)
    if not members:
        raise ValueError("routed() needs at least one completer")
    ncls = {m.config.num_classes for m in members}
    if len(ncls) > 1:
        raise ValueError(f"routed completers must share num_classes, got {sorted(ncls)}")
    return members


def head(members: Sequence):
    """The member nearest ratio 0.5 (distances rounded, so 0.3 ties 0.7; ties go to the lower ratio)."""
    return min(members, key=lambda m: round(abs(m.config.mask_ratio - 0.5), 9))


def route(members: Sequence, hidden_fraction: float):
    """The member whose ratio is nearest ``hidden_fraction``; distances rounded so float noise cannot
    break a tie (0.5 is as near 0.3 as 0.7); ties go to the lower ratio."""
    return min(members, key=lambda m: (round(abs(m.config.mask_ratio - hidden_fraction), 9), m.config.mask_ratio))


def groups(samples: Sequence, route_fn: Callable, grid: tuple[int, int]) -> dict:
    """Samples (each with a missing map ``miss [H, W]`` and a ``label``) grouped by the member
    ``route_fn(fraction of hidden patches)`` that completes them and by size: ``{key: (member, [indices])}``."""
    out: dict = {}
    for i, s in enumerate(samples):
        fraction = float(hidden_from_missing(s.miss.unsqueeze(0), grid)[0].float().mean())
        member = route_fn(fraction)
        out.setdefault((id(member), tuple(s.label.shape)), (member, []))[1].append(i)
    return out
