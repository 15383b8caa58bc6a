"""``run``, ``report`` and ``demo`` with the API patched: what each passes to ``edgexfer.api``
and renders, without running a pipeline."""

from __future__ import annotations

from pathlib import Path

import edgexfer.api
from kit import call_cli

SUMMARY = {
    "pipeline": "digits",
    "run_dir": "runs/demo",
    "wall_seconds": 75.0,
    "stages": {"finetune": {"status": "done", "seconds": 61.5}, "export": {"status": "skipped"}},
    "report": "runs/demo/report.md",
    "report_html": "runs/demo/report.html",
}
HEADLINE = [
    {
        "model": "student",
        "role": "deployed",
        "source_accuracy": 0.981,
        "target_accuracy": 0.874,
        "bytes": 42_000,
        "latency_ms": 0.31,
        "macs": 1_200_000,
    }
]


def test_run_resolves_the_recipe_and_renders_each_stage(capsys, monkeypatch, tmp_path):
    seen = {}

    def fake_run(pipeline, **options):
        seen.update(pipeline=pipeline, **options)
        return SUMMARY

    monkeypatch.setattr(edgexfer.api, "run_pipeline", fake_run)
    shown = call_cli(capsys, "run", "digits", "--set", "finetune.epochs=1", "--only", "finetune")
    assert shown.code == 0, shown.err
    assert Path(seen["pipeline"]).name == "digits.yaml" and seen["overrides"] == ["finetune.epochs=1"]
    assert seen["only"] == "finetune" and seen["from_stage"] is None
    assert "61.5" in shown.out and "skipped" in shown.out and "report: runs/demo/report.md" in shown.out
    missing = call_cli(capsys, "run", str(tmp_path / "nope.yaml"))
    assert missing.code == 2 and "nope.yaml" in missing.err


def test_run_list_shows_the_shipped_recipes(capsys):
    shown = call_cli(capsys, "run", "--list")
    assert shown.code == 0 and "digits" in shown.out and "fashion-mnist" in shown.out


def test_report_rebuilds_through_the_api(capsys, monkeypatch):
    monkeypatch.setattr(
        edgexfer.api, "rebuild_report", lambda run_dir: {"report": f"{run_dir}/report.md", "report_html": "r.html"}
    )
    shown = call_cli(capsys, "report", "runs/x")
    assert shown.code == 0 and "report: runs/x/report.md" in shown.out and "html:   r.html" in shown.out


def test_demo_over_seeds_renders_the_headline_and_the_spread(capsys, monkeypatch):
    seen = {}

    def fake_demo(run_dir, *, seeds, **options):
        seen.update(run_dir=run_dir, seeds=seeds, **options)
        return {
            "summary": {**SUMMARY, "headline": HEADLINE, "domains": {"source": "uci-digits", "target": "mnist-5k"}},
            "seeds": [0, 1],
            "metrics": {"student · target accuracy": {"mean": 0.87, "std": 0.01, "values": [0.86, 0.88]}},
            "file": "runs/demo/seeds.json",
        }

    monkeypatch.setattr(edgexfer.api, "demo", fake_demo)
    shown = call_cli(capsys, "demo", "--seeds", "2", "--full")
    assert shown.code == 0, shown.err
    assert seen["seeds"] == 2 and seen["full"] is True and seen["run_dir"] == Path("runs/demo")
    assert "student" in shown.out and "98.10" in shown.out and "0.8700 ± 0.0100" in shown.out
    assert "spread: runs/demo/seeds.json" in shown.out
    # the headline names the domains the run used (here swapped with --set), not the recipe's defaults
    assert "uci-digits: held-out test split; mnist-5k: all" in " ".join(shown.out.split())


def test_demo_domain_names_follow_the_overrides():
    from edgexfer.demo import domain_names

    assert domain_names([]) == {"source": "mnist-5k", "target": "uci-digits"}
    swapped = ["data.source.dataset=uci-digits", "data.target={path: /data/my-digits}"]
    assert domain_names(swapped) == {"source": "uci-digits", "target": "my-digits"}
