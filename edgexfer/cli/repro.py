"""CLI command ``reproduce``: re-run the stage(s) that made an artifact or a run, and compare.

Exit codes: 0 bit-identical, 4 (``EXIT_DIFFERS``) the re-run differs, 2 bad input (an input
that is gone or changed, a manifest without a recorded call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table


def register(app: typer.Typer) -> None:
    from edgexfer.cli.main import console

    @app.command()
    def reproduce(
        target: Path = typer.Argument(
            ...,
            help="An artifact directory, or a run directory of `edgexfer run` "
            "(every artifact stage, each from the original inputs).",
        ),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full comparison to FILE."),
        work_dir: Optional[Path] = typer.Option(
            None, "--work-dir", help="Where the temporary re-runs go (default: the system's temporary directory)."
        ),
    ) -> None:
        """Re-run what made ARTIFACT (or each stage of RUN_DIR) from its manifest; exit 0 if bit-identical, 4 if not."""
        from edgexfer import api
        from edgexfer.reproduce import EXIT_DIFFERS

        result = api.reproduce(target, work_dir=work_dir, log=console.print)
        table = Table(title=f"reproduce {target}")
        for column in ("stage", "result", "re-run s", "first run s", "max |Δ| weights/outputs", "max |Δaccuracy|"):
            table.add_column(column, justify="left" if column in ("stage", "result") else "right")
        for stage in result["stages"]:
            model = stage["comparison"]["model"]
            delta = model.get("max_abs_diff")
            if delta is None and "outputs" in model:
                delta = model["outputs"].get("max_abs_diff")
            first = stage.get("run_seconds") or stage.get("original_seconds")
            table.add_row(
                stage.get("stage_name") or stage["stage"],
                "[green]identical[/green]" if stage["identical"] else "[red]differs[/red]",
                f"{stage['seconds']:.1f}",
                "—" if first is None else f"{first:.1f}",
                "—" if delta is None else f"{delta:.3g}",
                f"{stage['comparison']['metrics']['max_abs_diff']:.4g}",
            )
        console.print(table)
        for stage in result["stages"]:
            if stage["explanation"] != "bit-identical":
                console.print(f"{stage.get('stage_name') or stage['stage']}: {stage['explanation']}", highlight=False)
        for skipped in result.get("skipped", []):
            console.print(f"[dim]{skipped['stage']}: not re-run ({skipped['why']})[/dim]")
        if json_out:
            json_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
            console.print(f"comparison: {json_out}")
        console.print(f"{'identical' if result['identical'] else 'DIFFERS'} in {result['seconds']:.1f} s")
        if not result["identical"]:
            raise typer.Exit(EXIT_DIFFERS)
