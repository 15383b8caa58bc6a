"""What a report reads besides the road (``edgexfer.evaluate.road``): each stage's state,
manifest and metrics, a check's rows, the machine it ran on. Only files the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgexfer.evaluate.latency import batch1_row


def stage_rows(run_dir: Path, order: list[str], types: dict[str, str], state: dict) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        recorded = state["stages"].get(name, {})
        manifest, metrics = read_json(run_dir / name / "manifest.json"), read_json(run_dir / name / "metrics.json")
        parent = (manifest or {}).get("parent") or {}
        made_from = [Path(parent["path"]).name] if parent else []
        evaluated = read_json(run_dir / name / "evaluate.json").get("artifact")
        made_from += [Path(evaluated).name] if evaluated else []
        made_from += [c["name"] for c in read_json(run_dir / name / "check.json").get("candidates", [])]
        rows.append(
            {
                "name": name,
                "type": types.get(name, name),
                "status": recorded.get("status", "not run"),
                "seconds": recorded.get("seconds"),
                "parent": ", ".join(made_from) or "—",
                "metrics": metrics,
                "manifest": manifest,
            }
        )
    return rows


def check_rows(result: dict) -> list[dict[str, Any]]:
    """The Keras parents and the exported candidates of a check result: accuracy, agreement,
    size, MACs per image and batch-1 latency."""

    def timing(latency: list[dict]) -> dict[str, Any]:
        row = batch1_row(latency)
        if row is None:
            return {"latency_ms": None, "threads": "—"}
        used = row.get("threads_used") or row.get("threads")
        return {"latency_ms": row["p50_ms"], "threads": f"{used}" if row.get("threads") else f"{used} (runtime's own)"}

    rows = [
        {
            "name": f"{p['name']} (Keras)",
            "format": "keras",
            "accuracy": p.get("accuracy"),
            "agreement": None,
            "size": p["size_bytes"],
            "macs": p.get("macs"),
            **timing(p.get("latency", [])),
        }
        for p in result.get("parents", [])
    ]
    rows += [
        {
            "name": c["name"],
            "format": f"{c['format']}/{c['quant']}",
            "accuracy": c["parity"]["accuracy"],
            "agreement": c["parity"]["agreement"],
            "size": c["size_bytes"],
            "macs": c.get("macs"),
            **timing(c.get("latency", [])),
        }
        for c in result.get("candidates", [])
    ]
    return rows


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
