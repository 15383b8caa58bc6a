"""The backbone registry: what exists (a spec), apart from what to build on it (the head).

A backbone builder returns a flat tf_keras functional model from a preprocessed image
(``NHWC`` float, see ``Preprocessing``) to a pooled feature vector. Heads are added on
``model.output`` so the whole classifier stays one flat functional graph, which tfmot can
prune and quantize (a Model nested as a layer cannot be quantized).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgexfer.artifact import Preprocessing
from edgexfer.errors import BackboneError, ConfigError

# name -> spec, filled by @register_backbone at import of the family modules.
_REGISTRY: dict[str, BackboneSpec] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone family member.

    ``build(input_size, weights, width)`` returns the headless feature model; ``weights`` is
    ``"imagenet"``, ``"none"`` or a local file path; ``width`` is the width multiplier
    (MobileNet's alpha) where ``widths`` lists the allowed ones, else ``None``.
    """

    name: str
    family: str
    default_input_size: int
    min_input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str
    build: Callable[..., Any]
    color: str = "RGB"
    widths: tuple[float, ...] = ()
    default_width: float | None = None
    parameter_count: Callable[[], int] | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocessing(self, input_size: int | None = None) -> Preprocessing:
        return Preprocessing(
            input_size=input_size or self.default_input_size, mean=self.mean, std=self.std, color=self.color
        )

    def count_parameters(self) -> int:
        """Parameters of the headless model at its default size and width (built once, cached)."""
        if self.parameter_count is not None:
            return self.parameter_count()
        return _built_parameter_count(self.name)

    def check_options(self, input_size: int, width: float | None) -> None:
        if input_size < self.min_input_size:
            raise ConfigError(
                f"--img-size {input_size} is too small for {self.name}: it needs at least {self.min_input_size} px"
            )
        if width is not None and width != self.default_width and width not in self.widths:
            allowed = ", ".join(str(w) for w in self.widths) or "none (this backbone has one width)"
            raise ConfigError(f"--width {width} is not available for {self.name}; allowed: {allowed}")


def _built_parameter_count(name: str) -> int:
    import json

    from edgexfer.tf_env import cache_dir

    path = cache_dir() / "parameter_counts.json"
    counts = json.loads(path.read_text()) if path.is_file() else {}
    if name not in counts:
        from edgexfer.keras_io import count_params

        counts[name] = count_params(create_backbone(name, weights="none"))
        path.write_text(json.dumps(counts, indent=1))
    return counts[name]


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    # Importing a family module registers its members.
    from edgexfer.backbones import efficientnet_lite, keras_apps, lite_students, small_cnn  # noqa: F401


def list_backbones() -> list[BackboneSpec]:
    _load_families()
    return sorted(_REGISTRY.values(), key=lambda spec: (spec.family, spec.name))


def get_backbone(name: str) -> BackboneSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        # A member of a family named by a suffix (lite0_b9, cnn_huge): list that family's valid ones.
        prefix = name.rsplit("_", 1)[0] + "_" if "_" in name else None
        siblings = sorted(n for n in _REGISTRY if prefix and n.startswith(prefix))
        if siblings:
            raise BackboneError(
                f"unknown backbone {name!r}{hint} Valid {prefix}* ones: {', '.join(siblings)} "
                "(all: `edgexfer backbones`)"
            ) from None
        raise BackboneError(
            f"unknown backbone {name!r}{hint} Known: {', '.join(sorted(_REGISTRY))} (see `edgexfer backbones`)"
        ) from None


def create_backbone(name: str, input_size: int | None = None, weights: str = "imagenet", width: float | None = None):
    """Build the headless feature model of a registered backbone."""
    spec = get_backbone(name)
    size = input_size or spec.default_input_size
    spec.check_options(size, width)
    return spec.build(input_size=size, weights=weights, width=width if width is not None else spec.default_width)
