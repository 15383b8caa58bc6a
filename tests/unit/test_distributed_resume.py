"""Sharding, batch splitting, TF_CONFIG checks, the local launcher's configs, checkpoint bookkeeping (no TensorFlow)."""

import importlib.util
import json
from pathlib import Path

import pytest

from edgexfer.errors import ConfigError
from edgexfer.train import distributed, resume

ROOT = Path(__file__).resolve().parents[2]


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_local", ROOT / "tools" / "launch_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shards_are_equal_disjoint_and_cover_all_but_the_remainder():
    samples = list(range(101))
    shards = [distributed.shard(samples, distributed.Cluster("multi-worker", 3, i), seed=4) for i in range(3)]
    parts = [set(part) for part, _ in shards]
    assert [len(p) for p in parts] == [33, 33, 33]
    assert not (parts[0] & parts[1]) and not (parts[1] & parts[2]) and not (parts[0] & parts[2])
    assert shards[0][1] == {"workers": 3, "worker_images": [33, 33, 33], "left_out_images": 2}
    again, _ = distributed.shard(samples, distributed.Cluster("multi-worker", 3, 1), seed=4)
    assert again == shards[1][0]  # every worker computes the same permutation
    whole, info = distributed.shard(samples, distributed.Cluster("default"), seed=4)
    assert whole == samples and info["worker_images"] == [101]


def test_global_batch_must_divide_by_the_workers():
    assert distributed.per_worker_batch(64, distributed.Cluster("multi-worker", 4, 0)) == 16
    with pytest.raises(ConfigError, match="must divide by the 4 workers; pass --batch-size 28 or 32"):
        distributed.per_worker_batch(30, distributed.Cluster("multi-worker", 4, 0))
    with pytest.raises(ConfigError, match="cannot be shared by 3 workers"):
        distributed.shard([1, 2], distributed.Cluster("multi-worker", 3, 0), seed=0)


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        (json.dumps({"cluster": {}}), "TF_CONFIG must hold"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), "index 3 is outside"),
    ],
)
def test_bad_tf_config_is_a_one_line_error(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=message) as error:
        distributed.check_tf_config()
    assert "\n" not in str(error.value)


def test_cluster_from_tf_config(monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
    )
    cluster = distributed.cluster_of("multi-worker")
    assert (cluster.workers, cluster.index, cluster.is_chief, cluster.multi_worker) == (2, 1, False, True)
    assert distributed.cluster_of("default").workers == 1


def test_launcher_gives_each_worker_its_own_task_and_free_ports():
    launcher = _launcher()
    ports = launcher.free_ports(3)
    assert len(set(ports)) == 3
    configs = [json.loads(c) for c in launcher.tf_configs(3, ports)]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"]["worker"] == [f"localhost:{p}" for p in ports] for c in configs)
    assert launcher.main(["1", "--", "true"]) == 2 and launcher.main(["2", "true"]) == 2


def test_two_local_workers_run_and_a_failing_one_stops_the_rest(tmp_path):
    launcher = _launcher()
    ok = launcher.main(
        [
            "2",
            "--logs",
            str(tmp_path / "ok"),
            "--",
            "python3",
            "-c",
            "import json, os; print(json.loads(os.environ['TF_CONFIG'])['task']['index'])",
        ]
    )
    assert ok == 0 and (tmp_path / "ok" / "worker-1.log").read_text().strip() == "1"
    failed = launcher.main(
        [
            "2",
            "--logs",
            str(tmp_path / "bad"),
            "--",
            "python3",
            "-c",
            "import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index'];"
            "sys.exit(3) if i == 1 else time.sleep(60)",
        ]
    )
    assert failed == 3


def test_checkpoint_is_tied_to_out_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEXFER_CACHE", str(tmp_path / "cache"))
    said = []
    first = resume.StageCheckpoint("prune", tmp_path / "out", {"config": {"epochs": 3}}, log=said.append)
    assert first.dir == resume.checkpoint_dir(tmp_path / "out") and first.dir.parent.name == "checkpoints"
    (first.dir / "phase.json").write_text("{}")
    resume.StageCheckpoint("prune", tmp_path / "out", {"config": {"epochs": 3}}, log=said.append)
    assert "found the checkpoint of an interrupted prune run" in said[-1]
    assert (first.dir / "phase.json").exists()
    resume.StageCheckpoint("prune", tmp_path / "out", {"config": {"epochs": 4}}, log=said.append)
    assert "config.epochs 3 → 4" in said[-1] and "starting afresh" in said[-1]
    assert not (first.dir / "phase.json").exists()
    assert [e["stage"] for e in resume.list_checkpoints()] == ["prune"]
    assert len(resume.remove_checkpoints()) == 1 and resume.list_checkpoints() == []
