"""Typed views of the results of ``check`` and ``benchmark`` for a renderer (the CLI).

``check.json`` / ``benchmark.json`` stay the files other tools read (the run report, CI); these
dataclasses name what a renderer reads from them in one place. Their table rows come from
``edgexfer.evaluate.check_tables``, shared with ``check.md`` and ``benchmark.md``, which read
the result itself (``raw``), so the terminal and the Markdown tables cannot differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CandidateOutcome:
    """One exported model of a check: whether it passed the gate, why not, what to look at."""

    name: str
    passed: bool
    failures: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    data: str
    split: str
    n: int
    gated: bool
    passed: bool
    failed: tuple[str, ...]
    candidates: tuple[CandidateOutcome, ...]
    reference_is_keras: bool  # parity against the Keras parent, else against the first exported file
    reference_name: str | None
    reference_note: str | None  # why there is no Keras reference
    class_count: int
    latency_rows: tuple[dict[str, Any], ...]  # parents' rows first, then the candidates'
    json_path: str
    markdown_path: str
    raw: dict[str, Any]

    @classmethod
    def of(cls, result: dict[str, Any]) -> CheckResult:
        reference = result.get("reference") or {"kind": "keras"}
        return cls(
            data=str(result["data"]),
            split=result["split"],
            n=result["n"],
            gated=bool(result["gated"]),
            passed=bool(result["passed"]),
            failed=tuple(result.get("failed", [])),
            candidates=tuple(
                CandidateOutcome(row["name"], bool(row["passed"]), tuple(row["failures"]), tuple(row["warnings"]))
                for row in result["candidates"]
            ),
            reference_is_keras=reference["kind"] == "keras",
            reference_name=reference.get("name"),
            reference_note=reference.get("why"),
            class_count=len(result["label_names"]),
            latency_rows=tuple(r for row in result["parents"] for r in row["latency"])
            + tuple(r for row in result["candidates"] for r in row["latency"]),
            json_path=result["report"]["json"],
            markdown_path=result["report"]["markdown"],
            raw=result,
        )


@dataclass(frozen=True)
class BenchmarkResult:
    models: tuple[str, ...]
    cpus_usable: int
    markdown_path: str
    raw: dict[str, Any]

    @classmethod
    def of(cls, result: dict[str, Any]) -> BenchmarkResult:
        return cls(
            models=tuple(str(row["model"]) for row in result["rows"]),
            cpus_usable=result["environment"]["cpus_usable"],
            markdown_path=result["report"]["markdown"],
            raw=result,
        )
