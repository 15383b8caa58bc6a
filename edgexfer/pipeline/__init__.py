"""``edgexfer run PIPELINE.yaml``: the stages and their configs in one file, run in order,
resumable.

- ``stages``: the stage types a file may name, how each runs, which config validates it;
- ``load``: reading, overriding and validating a file (``load_pipeline``);
- ``run``: running it, skipping what is up to date (``run_pipeline``, ``stage_hash``);
- ``state``: the run directory's state file and event log (``rebuild_report`` reads them).
"""

from edgexfer.pipeline.load import Pipeline, Stage, load_pipeline
from edgexfer.pipeline.run import run_pipeline, stage_hash
from edgexfer.pipeline.stages import STAGE_TYPES, StageType
from edgexfer.pipeline.state import EVENTS_FILE, STATE_FILE, rebuild_report

__all__ = [
    "EVENTS_FILE",
    "STAGE_TYPES",
    "STATE_FILE",
    "Pipeline",
    "Stage",
    "StageType",
    "load_pipeline",
    "rebuild_report",
    "run_pipeline",
    "stage_hash",
]
