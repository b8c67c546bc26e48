"""Timeouts handed to public calls, checked in one place.

``get(timeout=)``, ``join(timeout=)`` and the emitters' ``flush(timeout_s)`` and
``stop``/``close(timeout_s)`` take seconds, None meaning no limit (or the call's
default). Each refuses what is not a number here, in the same words, before it does
anything: asyncio would otherwise fail half-way through (a shutdown already begun), and
a NaN compares false with every deadline, so it would wait for ever or not at all.
"""

from __future__ import annotations

import math

from resultlog.errors import ValidationError


def checked_timeout(timeout: object, name: str = "timeout", *, negative: bool = False) -> float | None:
    """``timeout`` in seconds as a float (infinity: no limit), or None; else
    :class:`ValidationError` naming ``name``.

    A bool is not a number here, nor is NaN. A negative timeout is refused unless
    ``negative``: a wait may be handed one that has passed already (a deadline minus
    the time now), while a shutdown handed one would give up at once on the events it
    was asked to deliver.
    """
    if timeout is None:
        return None
    # timeout != timeout: NaN, without math.isnan's OverflowError on an int too large.
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise ValidationError(f"{name} must be None or a number of seconds, not {timeout!r:.40}")
    if timeout < 0 and not negative:
        raise ValidationError(f"{name} must be None or a number of seconds >= 0, not {timeout!r}")
    try:
        return float(timeout)
    except OverflowError:  # an int beyond any float: as good as no limit
        return math.inf if timeout > 0 else -math.inf
