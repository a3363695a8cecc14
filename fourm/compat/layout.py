"""State-dict layouts compared with the reference's (``python -m fourm.compat.ml4m check`` and
``check-tokenizer``): a layout is ``{key: {"shape", "dtype", "kind"}}``, kind ``parameter`` or ``buffer``."""
from __future__ import annotations

from typing import Mapping


def layout_differences(mine: Mapping[str, dict], theirs: Mapping[str, dict]) -> list[str]:
    """Differences between two state-dict layouts ``{key: {"shape", "dtype", "kind"}}``: keys on
    one side only, and shape, dtype or kind (parameter / buffer) that differ (empty = identical)."""
    problems = [f"missing in fourm: {k}" for k in theirs if k not in mine]
    problems += [f"extra in fourm: {k}" for k in mine if k not in theirs]
    for k in mine.keys() & theirs.keys():
        for field in ("shape", "dtype", "kind"):
            if mine[k][field] != theirs[k][field]:
                problems.append(f"{k}: {field} {mine[k][field]} != reference {theirs[k][field]}")
    return sorted(problems)
