"""Small plain CNNs for microcontroller-class budgets (distillation students).

Conv → BN → ReLU blocks, stride-2 downsampling, global average pooling: every layer is
supported by tfmot pruning/QAT and by int8 TFLite micro kernels. No pretrained weights.
"""

from __future__ import annotations

from pathlib import Path

from edgexfer.backbones.registry import BackboneSpec, register_backbone
from edgexfer.errors import BackboneError

# name -> filters of each stage (each stage halves the resolution).
_STAGES = {
    "cnn_tiny": (8, 16, 32),
    "cnn_small": (16, 32, 64, 128),
    "cnn_medium": (32, 64, 128, 256),
}
# Two convolutions per stage (a stride-2 one, then a stride-1 one at the same width): the
# "2-conv per stage" plain CNNs of the Fashion-MNIST benchmark, for the same stride.
_TWO_CONV = {"cnn_small2": _STAGES["cnn_small"]}


def _builder(name: str, stages: tuple[int, ...], convs_per_stage: int = 1):
    def build(input_size: int, weights: str, width: float | None):
        from edgexfer.tf_env import import_tf

        _, keras = import_tf()
        layers = keras.layers
        width = width or 1.0
        inputs = keras.Input((input_size, input_size, 3), name="input")
        x = inputs
        for index, filters in enumerate(stages):
            filters = max(4, int(round(filters * width)))
            x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"stage{index}_conv")(x)
            x = layers.BatchNormalization(name=f"stage{index}_bn")(x)
            x = layers.ReLU(name=f"stage{index}_relu")(x)
            for extra in range(1, convs_per_stage):
                x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"stage{index}_conv{extra + 1}")(x)
                x = layers.BatchNormalization(name=f"stage{index}_bn{extra + 1}")(x)
                x = layers.ReLU(name=f"stage{index}_relu{extra + 1}")(x)
        outputs = layers.GlobalAveragePooling2D(name="pool")(x)
        model = keras.Model(inputs, outputs, name=name)
        if weights == "imagenet":
            raise BackboneError(
                f"{name} has no ImageNet weights; use --weights none (train from "
                "scratch or distill into it) or --weights PATH"
            )
        if weights != "none":
            if not Path(weights).is_file():
                raise BackboneError(f"--weights {weights!r}: no such file")
            model.load_weights(weights)
        return model

    return build


for _name, _stages in {**_STAGES, **_TWO_CONV}.items():
    register_backbone(
        BackboneSpec(
            name=_name,
            family="small_cnn",
            default_input_size=32,
            min_input_size=2 ** len(_stages),
            mean=(127.5, 127.5, 127.5),
            std=(127.5, 127.5, 127.5),
            weights_source="none: train or distill",
            build=_builder(_name, _stages, 2 if _name in _TWO_CONV else 1),
            widths=(0.5, 1.0, 2.0),
            default_width=1.0,
        )
    )
