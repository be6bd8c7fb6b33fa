"""One look for every long-running loop: description, bar, count, elapsed time and ETA."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(
    description: str = "{task.description}",
    *extra: ProgressColumn,
    **kwargs,
) -> Progress:
    """A rich Progress with gpuprune's standard columns; ``extra`` columns go before the times.

    ``kwargs`` go to :class:`rich.progress.Progress` (``console``, ``transient``, ``disable``...).
    """
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        **kwargs,
    )
