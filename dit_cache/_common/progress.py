"""One rich progress bar for the bench and fine-tuning (a no-op when disabled: other ranks,
``--no-progress``)."""
from __future__ import annotations


class ProgressBar:
    """`title` (rich markup; ``{task.description}`` or ``{task.fields[name]}``), the bar, M/N,
    then one text per entry of `fields` with a template (``{"loss": "loss {}"}``; a None
    template makes a field the title alone shows), elapsed time and, with `remaining`, the
    time left."""

    def __init__(self, title: str, total: int, *, enabled: bool = True, console=None, completed: int = 0,
                 fields: dict[str, str] | None = None, remaining: bool = False):
        self.enabled, self.fields = enabled, dict(fields or {})
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn(title), BarColumn(), MofNCompleteColumn()]
        columns += [
            TextColumn(template.format("{task.fields[" + name + "]}")) for name, template in self.fields.items() if template
        ]
        columns += [TimeElapsedColumn()] + ([TimeRemainingColumn()] if remaining else [])
        self.progress = Progress(*columns, console=console, transient=False)
        self.task = self.progress.add_task("", total=total, completed=completed, **{n: "-" if t else "" for n, t in self.fields.items()})

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def update(self, *, advance: int = 0, completed: int | None = None, description: str | None = None, **fields) -> None:
        if self.enabled:
            if description is not None:
                fields["description"] = description
            if completed is not None:
                fields["completed"] = completed
            self.progress.update(self.task, advance=advance, **fields)
