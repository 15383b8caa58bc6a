"""On-device runtime: run exported ``.tflite``/``.onnx`` classifiers without TensorFlow.

``load_model(path)`` accepts a model file or an export artifact directory; the returned
``EdgeModel`` carries its labels and preprocessing and predicts from raw uint8 pixels or
image files. Importing this package must never import TensorFlow (a test asserts it).
"""

from edgexfer.runtime.images import load_image, load_images, normalize
from edgexfer.runtime.metadata import EmbeddedInfo, read_embedded_info
from edgexfer.runtime.model import EdgeModel, Prediction, load_model

__all__ = [
    "EdgeModel",
    "EmbeddedInfo",
    "Prediction",
    "load_image",
    "load_images",
    "load_model",
    "normalize",
    "read_embedded_info",
]
