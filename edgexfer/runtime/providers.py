"""Which device a model runs on, and proof that it did: ``--device cpu|cuda|auto``.

onnxruntime falls back to the CPU, with only a log line, when its CUDA provider cannot load
(a CPU-only ``onnxruntime`` wheel, no NVIDIA driver, no GPU, CUDA/cuDNN libraries that do not
match). A latency measured then is a CPU number. So a session asked for CUDA is checked after
it is built (``session.get_providers()``), and asking for ``cuda`` without getting it is a
``ConfigError`` that says why, never a quiet CPU number. ``auto`` takes CUDA where it starts,
else the CPU, and says which it got.

LiteRT runs ``.tflite`` files on the CPU (XNNPACK) here: ``cuda`` applies to ``.onnx`` models.
Imports no TensorFlow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence
from dataclasses import dataclass

from edgexfer.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")
ORT_CPU = "CPUExecutionProvider"
ORT_CUDA = "CUDAExecutionProvider"
LITERT_PROVIDER = "XNNPACK"  # LiteRT's default CPU delegate
TENSORFLOW_PROVIDER = "TensorFlow"
GPU_EXTRA_HINT = 'pip uninstall -y onnxruntime && pip install "edgexfer[gpu]"'


@dataclass(frozen=True)
class Placement:
    """Where one model ran: the execution provider in use and the device, e.g.
    ``CUDAExecutionProvider`` on ``cuda:0``, ``CPUExecutionProvider`` on ``cpu``."""

    provider: str
    device: str

    def to_dict(self) -> dict[str, str]:
        return {"provider": self.provider, "device": self.device}


CPU_ORT = Placement(ORT_CPU, "cpu")
CPU_LITERT = Placement(LITERT_PROVIDER, "cpu")


def check_device(device: str) -> str:
    """``device`` if it is one of ``DEVICES``; else ``ConfigError`` naming them."""
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r} is not a device; allowed: {', '.join(DEVICES)}")
    return device


def ort_available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def requested_providers(device: str, available: Sequence[str] | None = None) -> list[str]:
    """The onnxruntime providers to build a session with for ``device`` (priority order)."""
    check_device(device)
    if device == "cpu":
        return [ORT_CPU]
    if device == "cuda":
        return [ORT_CUDA, ORT_CPU]
    available = ort_available_providers() if available is None else list(available)
    return [ORT_CUDA, ORT_CPU] if ORT_CUDA in available else [ORT_CPU]


def placement_of(
    session_providers: Sequence[str], device: str, *, where: str = "the model", device_id: int = 0
) -> Placement:
    """Where a session built for ``device`` really runs, from ``session.get_providers()``.

    ``cuda`` without ``CUDAExecutionProvider`` in use: ``ConfigError`` saying why.
    """
    check_device(device)
    if ORT_CUDA in session_providers and device != "cpu":
        return Placement(ORT_CUDA, f"cuda:{device_id}")
    if device == "cuda":
        raise ConfigError(
            f"--device cuda: onnxruntime runs {where} on the CPU, not CUDA: {cuda_unavailable_reason()}; "
            "use --device cpu (or auto) to measure on the CPU"
        )
    return CPU_ORT


def cuda_unavailable_reason(
    available: Sequence[str] | None = None, driver: tuple[str, int] | None = None, version: str | None = None
) -> str:
    """Why onnxruntime's CUDA provider is not in use, most basic cause first: a CPU-only
    onnxruntime build, no NVIDIA driver, no CUDA device, or a provider that failed to start.
    ``available``/``driver``/``version`` are looked up when not given (tests pass them)."""
    if available is None or version is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers()) if available is None else available
        version = ort.__version__ if version is None else version
    if ORT_CUDA not in available:
        return (
            f"the installed onnxruntime {version} is a CPU-only build (providers: {', '.join(available)}); "
            f"install the GPU build: {GPU_EXTRA_HINT}"
        )
    state, count = driver if driver is not None else cuda_driver_state()
    if state == "no-driver":
        return "no NVIDIA driver: libcuda.so.1 (libcuda) cannot be loaded on this machine"
    if state == "init-failed":
        return "the NVIDIA driver is installed but cuInit failed (no usable GPU, or driver and kernel module differ)"
    if count == 0:
        return "the NVIDIA driver reports no CUDA device (check CUDA_VISIBLE_DEVICES and nvidia-smi)"
    return (
        f"onnxruntime-gpu {version} has the CUDA provider and the driver sees {count} device(s), but the "
        "provider did not start: the CUDA/cuDNN libraries it was built for are missing or of another "
        "version (see onnxruntime's CUDA requirements; its warning log names the library)"
    )


def cuda_driver_state() -> tuple[str, int]:
    """``("ok", device count)``, ``("no-driver", 0)`` or ``("init-failed", 0)`` from the CUDA driver API.

    Asks libcuda directly (ctypes, no CUDA toolkit needed) because onnxruntime only says that
    its provider failed, not whether there is a driver or a device at all.
    """
    names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"]
    lib = None
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return "no-driver", 0
    try:
        if lib.cuInit(0) != 0:
            return "init-failed", 0
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return "init-failed", 0
        return "ok", int(count.value)
    except (AttributeError, OSError):
        return "init-failed", 0


def preflight(device: str, suffixes: Sequence[str], where: str = "the models") -> None:
    """Refuse ``cuda`` before anything is loaded when it cannot work: a .tflite model, or an
    onnxruntime without the CUDA provider (building the session would only warn and use the CPU)."""
    check_device(device)
    if device != "cuda":
        return
    for suffix in suffixes:
        if suffix == ".tflite":
            tflite_placement(device, where)
    if ".onnx" in suffixes and ORT_CUDA not in ort_available_providers():
        raise ConfigError(
            f"--device cuda: onnxruntime cannot run {where} on CUDA: {cuda_unavailable_reason()}; "
            "use --device cpu (or auto) to measure on the CPU"
        )


def tflite_placement(device: str, where: str = "the model") -> Placement:
    """LiteRT runs on the CPU: fine for ``cpu``/``auto``, a ``ConfigError`` for ``cuda``."""
    check_device(device)
    if device == "cuda":
        raise ConfigError(
            f"--device cuda: {where} is a .tflite model, which LiteRT runs on the CPU here (no GPU "
            "delegate); time .onnx exports on CUDA, or use --device auto to run .tflite on the CPU"
        )
    return CPU_LITERT


def load_on_device(path, device: str, *, num_threads: int | None = None):
    """``(EdgeModel, Placement)``: a ``.tflite``/``.onnx`` file or export artifact loaded for
    ``device``, its placement read back from the session (``ConfigError`` if ``cuda`` was asked
    and is not in use)."""
    from pathlib import Path

    from edgexfer.runtime.model import load_model

    check_device(device)
    where = str(path)
    probe = Path(path)
    suffix = probe.suffix.lower()
    if probe.is_dir():
        from edgexfer.artifact import Artifact

        suffix = Artifact(probe).model_path.suffix.lower()
    if suffix == ".tflite":
        placement = tflite_placement(device, where)
        return load_model(path, num_threads=num_threads), placement
    preflight(device, [suffix], where)
    model = load_model(path, num_threads=num_threads, providers=requested_providers(device))
    return model, placement_of(model.providers, device, where=where)
