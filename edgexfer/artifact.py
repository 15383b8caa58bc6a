"""Artifacts: the one data type that flows between stages.

An artifact is a directory holding a model file, ``manifest.json`` (what later stages and
the on-device runtime need), ``metrics.json`` (what the stage measured) and ``labels.txt``.
A stage reads one artifact and writes a new one; it never changes its input.

This module imports no TensorFlow: the on-device runtime reads manifests too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edgexfer.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
METRICS = "metrics.json"
LABELS = "labels.txt"
# The model file names a stage may write, in the order they are looked for.
MODEL_FILES = ("model.keras", "model.h5", "model.tflite", "model.onnx", "saved_model")


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB uint8 pixels become model input: ``(x - mean) / std`` per channel.

    Travels with the model (like timm's pretrained config) so ``predict`` needs nothing else.
    """

    input_size: int
    channels: int = 3
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    resize: str = "bilinear"
    layout: str = "NHWC"
    color: str = "RGB"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        data = dict(data)
        data["mean"] = tuple(float(v) for v in data.get("mean", cls.mean))
        data["std"] = tuple(float(v) for v in data.get("std", cls.std))
        return cls(**data)


@dataclass
class Manifest:
    """What every later stage and the on-device runtime need to use an artifact."""

    stage: str
    label_names: list[str]
    preprocessing: Preprocessing
    backbone: str
    weights: str
    config: dict[str, Any] = field(default_factory=dict)
    model_file: str | None = None
    parent: dict[str, str] | None = None
    dataset: dict[str, Any] | None = None
    seed: int | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> "Manifest":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: schema_version {version!r} is not supported (this edgexfer reads "
                f"{SCHEMA_VERSION}); re-create the artifact with this version of edgexfer"
            )
        data = dict(data)
        try:
            data["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{where}: malformed manifest ({exc}); re-create the artifact") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative paths and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of edgexfer and the libraries that shape a model, without importing them."""
    from importlib import metadata

    versions = {}
    for name in ("edgexfer", "tensorflow", "tf-keras", "tensorflow-model-optimization",
                 "tf2onnx", "onnxruntime", "ai-edge-litert", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Artifact:
    """A finished artifact directory on disk."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ArtifactError(
                f"artifact {str(self.path)!r} does not exist or is not a directory; "
                "pass the --out directory of an earlier edgexfer stage"
            )
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(
                f"{str(self.path)!r} is not an edgexfer artifact: it has no {MANIFEST}; "
                "pass the --out directory of an earlier edgexfer stage"
            )
        try:
            data = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{manifest_path}: not valid JSON ({exc}); re-create the artifact") from None
        self.manifest = Manifest.from_dict(data, where=str(manifest_path))

    @property
    def model_path(self) -> Path:
        """The model file; an error naming the directory when there is none."""
        names = [self.manifest.model_file] if self.manifest.model_file else list(MODEL_FILES)
        for name in names:
            candidate = self.path / name
            if candidate.exists():
                return candidate
        raise ArtifactError(
            f"artifact {str(self.path)!r} has no model file (looked for {', '.join(names)}); "
            "re-run the stage that wrote it"
        )

    @property
    def metrics(self) -> dict[str, Any]:
        path = self.path / METRICS
        return json.loads(path.read_text()) if path.is_file() else {}

    def lineage(self) -> list["Artifact"]:
        """This artifact and its ancestors that still exist, newest first."""
        chain: list[Artifact] = [self]
        seen = {self.path.resolve()}
        while chain[-1].manifest.parent:
            parent_path = Path(chain[-1].manifest.parent["path"])
            if parent_path.resolve() in seen or not (parent_path / MANIFEST).is_file():
                break
            seen.add(parent_path.resolve())
            chain.append(Artifact(parent_path))
        return chain

    def parent_ref(self) -> dict[str, str]:
        """What a child stage records as its parent: path and sha256 of the model file."""
        return {"path": str(self.path.resolve()), "stage": self.manifest.stage,
                "sha256": sha256_path(self.model_path)}

    def load_keras(self):
        """Load the Keras model (``.keras`` or ``.h5``, in tfmot's scopes for QAT/pruned models)."""
        from edgexfer.models_io import load_keras_model

        return load_keras_model(self.model_path)

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, stage={self.manifest.stage!r})"


class ArtifactWriter:
    """Builds an artifact in a temporary sibling directory; ``commit`` renames it into place.

    A crash never leaves a half-written artifact a later stage could read, and an existing
    artifact at ``out`` is replaced only when the new one is complete.
    """

    def __init__(self, out: str | os.PathLike[str]):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists() and not (self.out / MANIFEST).is_file() and any(self.out.iterdir()):
            raise ArtifactError(
                f"--out {str(self.out)!r} exists and is not an edgexfer artifact; "
                "choose an empty or new directory so nothing of yours is overwritten"
            )
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.tmp.chmod(0o755)  # mkdtemp makes it 0700; a finished artifact should be readable

    def file(self, name: str) -> Path:
        return self.tmp / name

    def write_json(self, name: str, data: Any) -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")
        return path

    def commit(self, manifest: Manifest, metrics: dict[str, Any] | None = None) -> Artifact:
        manifest.created_at = manifest.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest.versions = manifest.versions or library_versions()
        _record_invocation(manifest, self.out)
        (self.tmp / LABELS).write_text("\n".join(manifest.label_names) + "\n")
        self.write_json(METRICS, metrics or {})
        self.write_json(MANIFEST, manifest.to_dict())
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return Artifact(self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _record_invocation(manifest: Manifest, out: Path) -> None:
    """The stage call that wrote this artifact, for ``edgexfer reproduce`` (``edgexfer.provenance``)."""
    from edgexfer.provenance import current_invocation, matches_out

    inherited = manifest.extra.get("invocation")
    if inherited is not None and not matches_out(inherited, out):
        # Stages copy their parent's ``extra``: its call is the parent's, never this artifact's.
        manifest.extra = {k: v for k, v in manifest.extra.items() if k != "invocation"}
    record = current_invocation()
    if record is not None and matches_out(record, out):
        manifest.extra = {**manifest.extra, "invocation": {**record, "stage": manifest.stage}}


@contextlib.contextmanager
def writing_artifact(out: str | os.PathLike[str]) -> Iterator[ArtifactWriter]:
    """``with writing_artifact(out) as w: ...; w.commit(manifest)`` — aborts cleanly on error."""
    writer = ArtifactWriter(out)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    else:
        if writer.tmp.exists():  # commit() was never called
            writer.abort()


def json_default(value: Any) -> Any:
    """numpy scalars and arrays, Paths and tuples in metrics become plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
