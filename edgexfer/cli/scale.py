"""``edgexfer clean``: the training checkpoints interrupted runs left behind (``edgexfer.api.checkpoints``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table


def register(app: typer.Typer) -> None:
    from edgexfer.cli.main import console

    @app.command()
    def clean(
        remove: bool = typer.Option(
            False, "--remove", help="Remove the listed checkpoints (those of runs that are not running)."
        ),
        out: Optional[Path] = typer.Option(
            None, "--out", help="Only the checkpoint of the stage writing this artifact directory."
        ),
    ) -> None:
        """List (or --remove) the checkpoints that interrupted training runs left under
        EDGEXFER_CACHE/checkpoints; re-running the interrupted command resumes from them."""
        from edgexfer import api

        if remove:
            removed = api.remove_checkpoints(out)
            freed = sum(entry["bytes"] for entry in removed)
            console.print(f"removed {len(removed)} checkpoint(s), {freed / 1e6:.1f} MB")
            return
        found = api.checkpoints(out)
        root, entries = found["root"], found["entries"]
        if not entries:
            console.print(f"no checkpoints under {root}")
            return
        table = Table(title=f"checkpoints of interrupted runs ({root})")
        for column in ("out", "stage", "progress", "updated", "size", "state"):
            table.add_column(column)
        for e in entries:
            progress = ", ".join(
                [f"{p} done" for p in e["finished_phases"]]
                + [
                    f"{p} {v['epochs_done']}/{v['epochs']} epochs"
                    for p, v in e["progress"].items()
                    if p not in e["finished_phases"]
                ]
            )
            table.add_row(
                str(e["out"]),
                str(e["stage"]),
                progress or "—",
                str(e["updated_at"] or "—"),
                f"{e['bytes'] / 1e6:.1f} MB",
                "running" if e["running"] else "interrupted",
            )
        console.print(table)
        console.print("re-run the same command to resume; `edgexfer clean --remove` deletes the interrupted ones")
