"""Export: Keras artifacts → TFLite / ONNX / SavedModel, with labels and preprocessing embedded.

Importing this package imports no TensorFlow; the converters import it when they run.
"""

from edgexfer.export._tflite import tflite_bytes
from edgexfer.export.convert import MIN_CALIBRATION_IMAGES, calibration_array, export_artifact, export_model
from edgexfer.export.formats import FORMATS, QUANT_MODES, ExportFormat, check_format_quant

__all__ = [
    "FORMATS",
    "MIN_CALIBRATION_IMAGES",
    "QUANT_MODES",
    "ExportFormat",
    "calibration_array",
    "check_format_quant",
    "export_artifact",
    "export_model",
    "tflite_bytes",
]
