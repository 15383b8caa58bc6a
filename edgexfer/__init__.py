"""edgexfer: take a pretrained image backbone across domains and down to an edge device.

Public names only; importing this package imports no TensorFlow.
"""

from edgexfer._env import configure_tensorflow_env as _configure

_configure()

from edgexfer.artifact import Artifact, Manifest, Preprocessing  # noqa: E402
from edgexfer.errors import (  # noqa: E402
    ArtifactError,
    BackboneError,
    ConfigError,
    DataError,
    EdgexferError,
    ExportError,
    ParityError,
)

__version__ = "0.1.0"
__all__ = [
    "Artifact",
    "ArtifactError",
    "BackboneError",
    "ConfigError",
    "DataError",
    "EdgexferError",
    "ExportError",
    "Manifest",
    "ParityError",
    "Preprocessing",
    "__version__",
]
