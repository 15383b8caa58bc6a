"""Fine-tuning benchmarks of the foundation issue, each arm in a fresh process.

    python tools/bench/finetune.py cache   DATA          # feature cache vs frozen backbone every epoch
    python tools/bench/finetune.py transfer DATA [--img-size 96 ...]   # ImageNet vs --weights none, same budget

Each arm records accuracy, wall time and peak RSS; results go to tools/bench/results/*.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from _common import run_in_subprocess, save

ARM = """
import json, time
from edgexfer import api
from edgexfer.train.common import peak_rss_mb
start = time.perf_counter()
a = api.finetune({data!r}, {out!r}, **{options!r})
m = a.metrics
print(json.dumps({{"test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"],
                  "timings_seconds": m["timings_seconds"], "wall_seconds": round(time.perf_counter() - start, 1),
                  "peak_rss_mb": round(peak_rss_mb(), 1), "splits": m["splits"]}}))
"""


def arm(data: str, options: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return run_in_subprocess(ARM.format(data=data, out=f"{tmp}/artifact", options=options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["cache", "transfer"])
    parser.add_argument("data")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=6)
    parser.add_argument("--unfreeze-layers", type=int, default=40)
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    base = dict(
        backbone="efficientnet_lite0",
        img_size=args.img_size,
        epochs=args.epochs,
        seed=0,
        max_train_images=args.max_train_images,
        early_stopping_patience=0,
    )
    if args.which == "cache":
        # Phase 1 only, no augmentation: the two arms compute the same thing, one of them once.
        options = dict(base, fine_tune_epochs=0)
        arms = {
            "feature_cache": arm(args.data, dict(options, feature_cache=True)),
            "backbone_every_epoch": arm(args.data, dict(options, feature_cache=False)),
        }
        cached, uncached = arms["feature_cache"], arms["backbone_every_epoch"]

        def phase(result):
            timings = result["timings_seconds"]
            return timings.get("feature_extraction_seconds", 0) + timings["phase1_seconds"]

        summary = {
            "phase1_speedup": round(phase(uncached) / phase(cached), 2),
            "accuracy_difference": round(cached["test_accuracy"] - uncached["test_accuracy"], 4),
        }
    else:
        options = dict(
            base,
            fine_tune_epochs=args.fine_tune_epochs,
            unfreeze_layers=args.unfreeze_layers,
            augment={"flip": args.flip},
        )
        arms = {
            "imagenet": arm(args.data, dict(options, weights="imagenet")),
            "none": arm(args.data, dict(options, weights="none")),
        }
        summary = {
            "transfer_gain_points": round(100 * (arms["imagenet"]["test_accuracy"] - arms["none"]["test_accuracy"]), 2)
        }
    result = {"which": args.which, "data": args.data, "options": options, "arms": arms, "summary": summary}
    print(json.dumps(summary))
    save(args.name or f"finetune_{args.which}", result)


if __name__ == "__main__":
    main()
