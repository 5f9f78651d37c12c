"""Short human spellings shared by findings, the CLI and the dashboard."""

from __future__ import annotations


def span(seconds: float) -> str:
    """A duration as ``45s``, ``5m``, ``2h05m``, ``10h``, ``3d``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h" if hours else f"{days}d"


def window_phrase(seconds: float) -> str:
    """``3600`` → ``"the last hour"``, ``36000`` → ``"the last 10h"``."""
    if round(seconds) == 3600:
        return "the last hour"
    if round(seconds) == 86400:
        return "the last day"
    return f"the last {span(seconds)}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"
