"""Classify images with MediaPipe Tasks' ImageClassifier: a real client of edgexfer's .tflite files.

Runs in an environment that has ``mediapipe`` (it cannot be installed next to edgexfer's own
dependencies: mediapipe needs absl-py~=2.3, tensorflow-model-optimization absl-py~=1.2), so
it imports nothing from edgexfer; ``tests/integration/test_mediapipe_client.py`` and
``bench/mediapipe_client.py`` run it with that environment's Python:

    python tools/mediapipe_classify.py MODEL.tflite --files A.png B.png ...   # MediaPipe decodes/resizes
    python tools/mediapipe_classify.py MODEL.tflite --pixels images.npy       # uint8 N×H×W×3, as given
    python tools/mediapipe_classify.py MODEL.tflite --metadata                # the metadata as MediaPipe reads it

Grayscale or RGBA files are made RGB first (MediaPipe would feed a grayscale file to the model
as one channel). Prints one JSON object: per image the top-1 ``label``/``score`` and every class's score, and
``latency_ms`` (median and p90 of ``classify`` per image, after a warm-up; ``--repeat N``
times over the images). MediaPipe's Python API has no thread setting: pin the process to one
core (``taskset -c 0``) for a one-thread number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--files", nargs="+")
    source.add_argument("--pixels")
    source.add_argument("--metadata", action="store_true")
    parser.add_argument("--repeat", type=int, default=0, help="timed passes over the images (0: none)")
    args = parser.parse_args(argv)

    if args.metadata:
        from mediapipe.tasks.python.metadata import metadata

        displayer = metadata.MetadataDisplayer.with_model_file(args.model)
        print(
            json.dumps(
                {
                    "metadata": json.loads(displayer.get_metadata_json()),
                    "packed_files": displayer.get_packed_associated_file_list(),
                }
            )
        )
        return 0

    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=args.model), max_results=-1)
    if args.files:
        images = [_rgb(mp, np, mp.Image.create_from_file(path)) for path in args.files]
    else:
        pixels = np.load(args.pixels, allow_pickle=False)
        images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(p)) for p in pixels]
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except Exception as exc:  # MediaPipe refuses the model: say why on one line
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 3
    with classifier:
        results = []
        for image in images:
            categories = classifier.classify(image).classifications[0].categories
            top = max(categories, key=lambda c: c.score)
            results.append(
                {
                    "label": top.category_name,
                    "index": top.index,
                    "score": float(top.score),
                    "scores": {c.category_name: float(c.score) for c in categories},
                }
            )
        times = []
        if args.repeat:
            for image in images[:5]:
                classifier.classify(image)  # warm-up
            for _ in range(args.repeat):
                for image in images:
                    start = time.perf_counter()
                    classifier.classify(image)
                    times.append((time.perf_counter() - start) * 1000)
    out = {"mediapipe": mp.__version__, "results": results}
    if times:
        out["latency_ms"] = {
            "median": float(np.median(times)),
            "p90": float(np.percentile(times, 90)),
            "calls": len(times),
        }
    json.dump(out, sys.stdout)
    return 0


def _rgb(mp, np, image):
    """A decoded grayscale (GRAY8) or RGBA file as SRGB: MediaPipe's ImageClassifier feeds the
    image's own channel count to the model, so an app converts it (as edgexfer's decoder does)."""
    if image.image_format == mp.ImageFormat.SRGB:
        return image
    pixels = np.asarray(image.numpy_view())
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        pixels = np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels[..., :3]))


if __name__ == "__main__":
    raise SystemExit(main())
