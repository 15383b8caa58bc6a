"""The export stage's config: one frozen model for the CLI's flags and a pipeline's ``export:``
keys, validated on construction (format, quantization, I/O type, calibration set size)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from edgexfer.config import FrozenConfig
from edgexfer.errors import ConfigError
from edgexfer.export.convert import DEFAULT_MAX_CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES, check_io_type_for
from edgexfer.export.formats import FORMATS, check_format_quant


class ExportConfig(FrozenConfig):
    """What to export to: a ``FORMATS`` row, its quantization and the int8 calibration set."""

    format: str = Field(..., description="a FORMATS row: tflite | onnx | tflite-micro | saved_model")
    quant: str | None = Field(
        None, description="none | fp16 | dynamic | int8; default: what the artifact's quantize stage chose, else none"
    )
    calibration_data: Path | None = Field(None, description="int8: folder of target-domain images")
    calibration_images: int = Field(DEFAULT_MAX_CALIBRATION_IMAGES, description="int8: at most this many images")
    opset: int = Field(15, description="ONNX opset")
    io_type: str | None = Field(None, description="tflite input/output type: uint8 | int8 | float32")
    gray_input: bool = Field(
        False,
        description="the device's images are grayscale: average the first convolution's colour channels "
        "(exact on gray images; int8 then cannot break filters whose colours cancel)",
    )

    @model_validator(mode="after")
    def _format_allows(self):
        # The checks raise ConfigError themselves (pydantic lets it through): their messages
        # name the flag and the choices, the same from the CLI and from a pipeline file.
        if self.format not in FORMATS:
            check_format_quant(self.format, "none")  # raises: names the allowed formats
        if self.quant is not None:
            check_format_quant(self.format, self.quant)
        check_io_type_for(FORMATS[self.format], self.io_type)
        if self.calibration_images < MIN_CALIBRATION_IMAGES:
            raise ConfigError(
                f"--calibration-images {self.calibration_images} is too few; int8 needs at least "
                f"{MIN_CALIBRATION_IMAGES} representative images (100–500 recommended)"
            )
        return self
