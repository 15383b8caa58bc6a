"""Artifacts: the one data type that flows between stages.

An artifact is a directory holding a model file, ``manifest.json`` (what later stages and
the on-device runtime need), ``metrics.json`` (what the stage measured) and ``labels.txt``.
A stage reads one artifact and writes a new one; it never changes its input.

This module imports no TensorFlow: the on-device runtime reads manifests too.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgexfer.errors import ArtifactError, ConfigError

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
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """From a manifest or a model's metadata (untrusted): every field checked and bounded,
        ``ValueError`` saying which one is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing must be an object, got {type(data).__name__}")
        data = dict(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing field {sorted(unknown)[0]!r}")
        data["input_size"] = _bounded_int(data.get("input_size"), "input_size", 1, MAX_INPUT_SIZE)
        data["channels"] = _bounded_int(data.get("channels", cls.channels), "channels", 1, 4)
        for key in ("mean", "std"):
            values = data.get(key, getattr(cls, key))
            if (
                not isinstance(values, (list, tuple))
                or not 1 <= len(values) <= 4
                or not all(_finite_number(v) for v in values)
            ):
                raise ValueError(f"preprocessing.{key} {values!r:.60} must be a list of 1-4 finite numbers")
            data[key] = tuple(float(v) for v in values)
        for key in ("resize", "layout", "color"):
            if not isinstance(data.get(key, ""), str) or len(data.get(key, "")) > 32:
                raise ValueError(f"preprocessing.{key} {data.get(key)!r:.60} must be a short string")
        return cls(**data)


# The largest input side a manifest or model metadata may declare: stages accept at most
# 1024 px (FinetuneConfig.img_size), so anything above is damage or a resource attack
# (15000 px would make predict allocate gigabytes per image).
MAX_INPUT_SIZE = 1024


def _finite_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"preprocessing.{name} {value!r:.60} is not a whole number")
    if not low <= int(value) <= high:
        raise ValueError(f"preprocessing.{name} {int(value)} is outside {low}..{high}")
    return int(value)


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
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise ArtifactError(
                f"{where}: malformed manifest (a JSON {type(data).__name__}, not an object); re-create the artifact"
            )
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: schema_version {version!r} is not supported (this edgexfer reads "
                f"{SCHEMA_VERSION}); re-create the artifact with this version of edgexfer"
            )
        data = dict(data)
        import dataclasses

        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [
            name
            for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        unknown = sorted(set(data) - set(fields))
        if missing or unknown:
            what = f"no field {missing[0]!r}" if missing else f"unknown field {unknown[0]!r}"
            raise ArtifactError(
                f"{where}: malformed manifest ({what}); re-create the artifact with this version of edgexfer"
            )
        try:
            data["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
            manifest = cls(**data)
            _check_manifest_types(manifest)
            return manifest
        except KeyError as exc:
            raise ArtifactError(f"{where}: malformed manifest (no field {exc}); re-create the artifact") from None
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed manifest ({exc}); re-create the artifact") from None


def _check_manifest_types(manifest: Manifest) -> None:
    """The fields later code relies on have the types it expects (a manifest is untrusted)."""
    if not isinstance(manifest.stage, str):
        raise ValueError(f"stage {manifest.stage!r:.60} is not a string")
    if not isinstance(manifest.label_names, list) or not all(isinstance(n, str) for n in manifest.label_names):
        raise ValueError("label_names must be a list of strings")
    if len(manifest.label_names) > MAX_LABELS:
        raise ValueError(f"{len(manifest.label_names)} label names (at most {MAX_LABELS})")
    for name in ("config", "extra", "versions"):
        if not isinstance(getattr(manifest, name), dict):
            raise ValueError(f"{name} must be an object")
    for name in ("parent", "dataset", "quantization"):
        if getattr(manifest, name) is not None and not isinstance(getattr(manifest, name), dict):
            raise ValueError(f"{name} must be an object or null")
    if manifest.parent is not None and not isinstance(manifest.parent.get("path", ""), str):
        raise ValueError("parent.path must be a string")
    model_file = manifest.model_file
    if model_file is not None and (
        not isinstance(model_file, str) or model_file in ("", ".", "..") or "/" in model_file or "\\" in model_file
    ):
        raise ValueError(f"model_file {model_file!r:.60} must be a file name inside the artifact")


MAX_LABELS = 100_000


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
    for name in (
        "edgexfer",
        "tensorflow",
        "tf-keras",
        "tensorflow-model-optimization",
        "tf2onnx",
        "onnxruntime",
        "ai-edge-litert",
        "numpy",
    ):
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

    def lineage(self) -> list[Artifact]:
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
        return {"path": str(self.path.resolve()), "stage": self.manifest.stage, "sha256": sha256_path(self.model_path)}

    def child_manifest(self, stage: str, config: dict[str, Any], model_file: str, **fields: Any) -> Manifest:
        """The manifest of a model a stage made from this artifact: its classes, preprocessing,
        backbone, weights, dataset and seed unless ``fields`` says otherwise, and this artifact
        as the parent."""
        manifest = self.manifest
        inherited: dict[str, Any] = {
            "label_names": list(manifest.label_names),
            "preprocessing": manifest.preprocessing,
            "backbone": manifest.backbone,
            "weights": manifest.weights,
            "dataset": manifest.dataset,
            "seed": manifest.seed,
        }
        return Manifest(
            stage=stage, config=config, model_file=model_file, parent=self.parent_ref(), **{**inherited, **fields}
        )

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, stage={self.manifest.stage!r})"


class ArtifactWriter:
    """Builds an artifact in a temporary sibling directory; ``commit`` renames it into place.

    A crash never leaves a half-written artifact a later stage could read, and an existing
    artifact at ``out`` is replaced only when the new one is complete.
    """

    def __init__(self, out: str | os.PathLike[str]):
        from edgexfer.tempfiles import sweep_stale, tmp_prefix

        self.out = Path(out)
        check_out_dir(self.out)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(self.out.parent)  # what runs killed before they could clean up left here
            self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(self.out.name), dir=self.out.parent))
        except OSError as exc:
            raise ArtifactError(
                f"--out {str(self.out)!r}: cannot create a folder beside it "
                f"({exc.strerror or exc}); choose a writable location"
            ) from None
        self.tmp.chmod(0o755)  # mkdtemp makes it 0700; a finished artifact should be readable

    def file(self, name: str) -> Path:
        return self.tmp / name

    def write_json(self, name: str, data: Any) -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")
        return path

    def commit(self, manifest: Manifest, metrics: dict[str, Any] | None = None) -> Artifact:
        manifest.created_at = manifest.created_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        manifest.versions = manifest.versions or library_versions()
        _add_extra_at_commit(manifest, self.out)
        (self.tmp / LABELS).write_text("\n".join(manifest.label_names) + "\n")
        self.write_json(METRICS, metrics or {})
        self.write_json(MANIFEST, manifest.to_dict())
        old = None
        if self.out.exists():
            from edgexfer.tempfiles import old_name

            check_out_dir(self.out)  # still an artifact (nothing else appeared there meanwhile)
            old = self.out.with_name(old_name(self.out.name))
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return Artifact(self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    """``ArtifactError`` unless ``out`` may receive an artifact: a new or empty folder, or one that
    is verifiably an edgexfer artifact (only then is it replaced). Never the current folder or
    one above it, never a file, never inside an artifact, never a folder holding another artifact."""
    label = f"--out {str(out)!r}"
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ArtifactError(
            f"{label} is the current folder or one above it; name a new folder for the artifact, e.g. --out runs/NAME"
        )
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{label} is a file, not a folder; name a new folder for the artifact")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ArtifactError(
            f"{label}: {str(blocking)!r} is a file, so no folder can be made inside it; name a folder elsewhere"
        )
    for ancestor in resolved.parents:
        if _artifact_problem(ancestor) is None:
            raise ArtifactError(
                f"{label} is inside the edgexfer artifact {str(ancestor)!r}; an artifact is "
                "never written into: choose a folder outside it"
            )
    if out.is_dir() and any(out.iterdir()):
        problem = _artifact_problem(out)
        if problem is not None:
            raise ArtifactError(
                f"{label} exists and is not an edgexfer artifact ({problem}); only an artifact "
                "is replaced: choose a new or empty folder so nothing of yours is overwritten"
            )


def refuse_input_as_out(
    out: str | os.PathLike[str], *inputs: Artifact | str | os.PathLike[str], error: type[Exception] = ConfigError
) -> None:
    """Raise ``error`` when ``out`` is one of a stage's inputs: a stage never writes over what it reads."""
    resolved = Path(out).resolve()
    for item in inputs:
        if resolved == Path(item.path if isinstance(item, Artifact) else item).resolve():
            which = "the input artifact" if len(inputs) == 1 else "an input artifact"
            raise error(f"--out {str(out)!r} is {which}; a stage never changes its input, choose another directory")


def _artifact_problem(path: Path) -> str | None:
    """Why ``path`` is not verifiably a finished edgexfer artifact, or ``None`` when it is one: a
    manifest edgexfer reads, labels.txt, metrics.json and a model, and no folder besides a
    SavedModel (so a folder that holds other things, or another artifact, is never replaced)."""
    try:
        if not (path / MANIFEST).is_file():
            return f"no {MANIFEST}"
        try:
            data = json.loads((path / MANIFEST).read_text())
            if not isinstance(data, dict):
                raise ArtifactError("not an object")
            manifest = Manifest.from_dict(data)
        except (ArtifactError, ValueError, TypeError, OSError):
            return f"its {MANIFEST} is not an edgexfer manifest"
        for name in (LABELS, METRICS):
            if not (path / name).is_file():
                return f"no {name}"
        models = [manifest.model_file] if manifest.model_file else list(MODEL_FILES)
        if not any((path / name).exists() for name in models):
            return "no model file"
        folders = [p.name for p in path.iterdir() if p.is_dir() and p.name not in MODEL_FILES]
        if folders:
            return f"it holds the folder {folders[0]!r}"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return None


# What the code running a stage asks of each artifact it commits: a function of the manifest and
# the artifact's folder that may add ``manifest.extra`` entries. ``edgexfer.provenance`` records
# the stage call there (``extra.invocation``) for ``edgexfer reproduce``.
_EXTRA_AT_COMMIT: contextvars.ContextVar[Callable[[Manifest, Path], None] | None] = contextvars.ContextVar(
    "edgexfer_extra_at_commit", default=None
)


@contextlib.contextmanager
def extra_at_commit(update: Callable[[Manifest, Path], None]) -> Iterator[None]:
    """While the block runs, ``update(manifest, out)`` runs on every artifact committed."""
    token = _EXTRA_AT_COMMIT.set(update)
    try:
        yield
    finally:
        _EXTRA_AT_COMMIT.reset(token)


def _add_extra_at_commit(manifest: Manifest, out: Path) -> None:
    # ``extra.invocation`` is the call that wrote one folder; stages copy their parent's ``extra``,
    # so a record for another folder is the parent's call, never this artifact's.
    inherited = manifest.extra.get("invocation")
    if isinstance(inherited, dict) and inherited.get("out") != str(Path(out).resolve()):
        manifest.extra = {k: v for k, v in manifest.extra.items() if k != "invocation"}
    update = _EXTRA_AT_COMMIT.get()
    if update is not None:
        update(manifest, out)


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
