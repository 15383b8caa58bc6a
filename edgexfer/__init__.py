"""edgexfer: take a pretrained image backbone across domains and down to an edge device.

Public names only; importing this package imports no TensorFlow and changes no environment:
TensorFlow's settings (Keras 2 for tfmot, quiet C++ logs) are made by ``tf_env.import_tf`` right
before TensorFlow is first imported.
"""

from edgexfer.artifact import Artifact, Manifest, Preprocessing
from edgexfer.errors import (
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
