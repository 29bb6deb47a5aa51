"""Progress bars on stderr (tqdm), off unless asked for, so tests and pipes stay quiet."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             disable: bool = False) -> tqdm:
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, mininterval=0.5,
                dynamic_ncols=True)
