"""Scaling benchmarks of issue 7, each point in a fresh process (its own peak RSS).

    python tools/bench/scaling.py images DATA --counts 1000 5000 20000 60000 --image-cache memory none
    python tools/bench/scaling.py sizes  DATA --count 5000 --sizes 64 96 128 224
    python tools/bench/scaling.py export DATA --backbones cnn_small cnn_medium efficientnet_lite0 mobilenet_v2

DATA is an image folder of either layout. Each point fine-tunes on a stratified, seeded
subset of COUNT of its images, linked into a temporary flat folder ROOT/<class>/ (finetune
then carves val and test, 10 % each), so "images" below is the size of that folder.

- images: fine-tuning time per image and peak RSS against the number of images, once per
  ``--image-cache`` mode (memory grows with the data; disk and none should stay flat).
- sizes: the same against the input size, at a fixed count.
- export: export (TFLite, ONNX) and check time against model size: a small artifact per
  backbone (1-epoch head-only finetune on a few hundred images, --weights none: the timings
  do not depend on the weights' values), exported and checked, parity only and with latency.

Times are of the API calls inside the point's process (TensorFlow already imported; the CLI
adds its few seconds of start-up). "train s" is finetune's total_train_seconds (feature
extraction, phase 1, phase 2; evaluation excluded); peak RSS is the process's ru_maxrss,
"setup" the peak after the model was built, before any data was read. A point that fails
(out of memory, say) is recorded with its error and the sweep goes on.

Results go to tools/bench/results/NAME.json (with a markdown table) and NAME.png (the plot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, markdown_table, run_in_subprocess, save

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

FINETUNE_POINT = """
import json, time
from edgexfer import api
start = time.perf_counter()
a = api.finetune({data!r}, {out!r}, **{options!r})
m = a.metrics
print(json.dumps({{"test_accuracy": m["test_accuracy"], "timings_seconds": m["timings_seconds"],
                  "train_images_per_second": m["train_images_per_second"], "peak_rss_mb": m["peak_rss_mb"],
                  "peak_rss_mb_after": m["peak_rss_mb_after"], "data_cache": m["data_cache"],
                  "splits": m["splits"], "params": m["params"],
                  "wall_seconds": round(time.perf_counter() - start, 1)}}))
"""

EXPORT_POINT = """
import json, time
from edgexfer import api
from edgexfer.train.common import peak_rss_mb

def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - start, 2)

art, finetune_s = timed(api.finetune, {data!r}, {tmp!r} + "/finetune", **{options!r})
point = {{"params": art.metrics["params"], "keras_bytes": art.metrics["model_bytes"], "finetune_seconds": finetune_s,
          "test_accuracy": art.metrics["test_accuracy"], "formats": {{}}}}
for fmt in {formats!r}:
    exported, export_s = timed(api.export, {tmp!r} + "/finetune", {tmp!r} + "/" + fmt, fmt, {quant!r})
    _, parity_s = timed(api.check, [exported.path], {data!r}, out={tmp!r} + "/check-parity-" + fmt,
                        max_images={check_images!r}, measure_latency=False)
    checked, check_s = timed(api.check, [exported.path], {data!r}, out={tmp!r} + "/check-" + fmt,
                             max_images={check_images!r})
    row = checked["candidates"][0]
    point["formats"][fmt] = {{"export_seconds": export_s, "check_parity_seconds": parity_s,
                             "check_seconds": check_s, "file_bytes": exported.model_path.stat().st_size,
                             "agreement": row["parity"]["agreement"]}}
point["peak_rss_mb"] = round(peak_rss_mb(), 1)
print(json.dumps(point))
"""


def image_files(root: Path) -> dict[str, list[Path]]:
    """Image files by class: the class is the parent folder (ROOT/<class>/* or ROOT/<split>/<class>/*)."""
    by_class: dict[str, list[Path]] = {}
    for dirpath, _, names in os.walk(root, followlinks=True):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = Path(dirpath) / name
                by_class.setdefault(path.parent.name, []).append(path)
    if len(by_class) < 2:
        raise SystemExit(f"{root}: found image files in {len(by_class)} class folder(s); need at least 2")
    return {name: sorted(paths) for name, paths in sorted(by_class.items())}


def make_subset(by_class: dict[str, list[Path]], count: int, out: Path, seed: int = 0) -> int:
    """Link a stratified, seeded subset of ``count`` images into ``out/<class>/``; returns its size."""
    import numpy as np

    total = sum(len(paths) for paths in by_class.values())
    if count > total:
        print(f"only {total} images available; the {count} point uses all of them", file=sys.stderr)
    rng = np.random.default_rng(seed)
    # Largest-remainder apportionment: each class gets its share of ``count``, rounded so the sum is exact.
    shares = {name: min(count, total) * len(paths) / total for name, paths in by_class.items()}
    taken = {name: int(share) for name, share in shares.items()}
    for name in sorted(shares, key=lambda n: shares[n] - taken[n], reverse=True)[
        : min(count, total) - sum(taken.values())
    ]:
        taken[name] += 1
    for name, paths in by_class.items():
        (out / name).mkdir(parents=True)
        for index in rng.choice(len(paths), taken[name], replace=False):
            source = paths[index]
            (out / name / f"{index}{source.suffix}").symlink_to(source.resolve())
            source.read_bytes()  # into the page cache, so that no point pays for cold reads
    return sum(taken.values())


def run_point(code: str) -> dict:
    """One point in a fresh process; a failed point (out of memory, an error) is recorded, not fatal."""
    start = time.perf_counter()
    try:
        return run_in_subprocess(code)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-5:]
        print(f"  point failed (exit {exc.returncode}): {' | '.join(tail)}", file=sys.stderr)
        return {
            "error": f"exit {exc.returncode}",
            "stderr_tail": tail,
            "wall_seconds": round(time.perf_counter() - start, 1),
        }


def finetune_point(data: Path, options: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_point(FINETUNE_POINT.format(data=str(data), out=f"{tmp}/artifact", options=options))
    if "error" not in result:
        timings, train = result["timings_seconds"], result["splits"]["train"]
        epochs = options["epochs"] + options["fine_tune_epochs"]
        result["train_ms_per_image_epoch"] = round(1000 * timings["total_train_seconds"] / (train * epochs), 3)
        result["rss_growth_mb"] = round(result["peak_rss_mb"] - result["peak_rss_mb_after"]["setup"], 1)
    return result


def finetune_options(args, **overrides) -> dict:
    return dict(
        backbone=args.backbone,
        weights=args.weights,
        img_size=args.img_size,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        unfreeze_layers=args.unfreeze_layers,
        batch_size=args.batch_size,
        early_stopping_patience=0,
        seed=0,
        **overrides,
    )


def sweep_images(args, by_class, tmp: Path) -> tuple[dict, str]:
    points = []
    for count in args.counts:
        folder = tmp / f"images-{count}"
        images = make_subset(by_class, count, folder)
        for mode in args.image_cache:
            print(f"images={images} image_cache={mode} ...", file=sys.stderr, flush=True)
            point = finetune_point(folder, finetune_options(args, image_cache=mode))
            points.append({"images": images, "image_cache": mode, **point})
            print(f"  {_summary(points[-1])}", file=sys.stderr, flush=True)
        _remove_links(folder)
    _plot(
        points,
        "images",
        "images in the fine-tuned folder",
        args.png,
        log_x=True,
        series="image_cache",
        title=f"{args.backbone} at {args.img_size or 'default'} px, {args.epochs}+{args.fine_tune_epochs} epochs",
    )
    return {"points": points}, _finetune_table(points, "images", "images")


def _finetune_table(points: list[dict], key: str, label: str) -> str:
    """One row per fine-tuning point: ``key`` (images or img_size) is the swept column."""
    header = [
        "image_cache",
        label,
        "train",
        "cache used (images / features)",
        "train s",
        "ms / image·epoch",
        "setup RSS MB",
        "peak RSS MB",
        "RSS growth MB",
        "test acc",
    ]
    rows = [
        [
            p["image_cache"],
            p[key],
            p.get("splits", {}).get("train"),
            _cache_used(p),
            p.get("timings_seconds", {}).get("total_train_seconds"),
            p.get("train_ms_per_image_epoch"),
            p.get("peak_rss_mb_after", {}).get("setup"),
            p.get("peak_rss_mb"),
            p.get("rss_growth_mb"),
            p.get("test_accuracy"),
        ]
        for p in points
    ]
    return markdown_table(header, rows)


def sweep_sizes(args, by_class, tmp: Path) -> tuple[dict, str]:
    folder = tmp / f"sizes-{args.count}"
    images = make_subset(by_class, args.count, folder)
    points = []
    for size in args.sizes:
        for mode in args.image_cache:
            print(f"img_size={size} images={images} image_cache={mode} ...", file=sys.stderr, flush=True)
            point = finetune_point(folder, finetune_options(args, image_cache=mode) | {"img_size": size})
            points.append({"img_size": size, "images": images, "image_cache": mode, **point})
            print(f"  {_summary(points[-1])}", file=sys.stderr, flush=True)
    _plot(
        points,
        "img_size",
        "input size (px)",
        args.png,
        log_x=False,
        series="image_cache",
        title=f"{args.backbone}, {images} images, {args.epochs}+{args.fine_tune_epochs} epochs",
    )
    return {"points": points}, _finetune_table(points, "img_size", "input px")


def sweep_export(args, by_class, tmp: Path) -> tuple[dict, str]:
    folder = tmp / f"export-{args.count}"
    images = make_subset(by_class, args.count, folder)
    points = []
    for backbone in args.backbones:
        print(f"export backbone={backbone} ...", file=sys.stderr, flush=True)
        options = dict(
            backbone=backbone,
            weights=args.weights,
            img_size=args.img_size,
            epochs=1,
            fine_tune_epochs=0,
            batch_size=args.batch_size,
            early_stopping_patience=0,
            seed=0,
        )
        with tempfile.TemporaryDirectory() as point_tmp:
            point = run_point(
                EXPORT_POINT.format(
                    data=str(folder),
                    tmp=point_tmp,
                    options=options,
                    formats=args.formats,
                    quant=args.quant,
                    check_images=args.check_images,
                )
            )
        points.append({"backbone": backbone, **point})
        print(f"  {json.dumps(points[-1])[:300]}", file=sys.stderr, flush=True)
    header = ["backbone", "params", "format", "file MB", "export s", "check s (parity)", "check s (with latency)"]
    rows = []
    for p in points:
        for fmt, f in p.get("formats", {}).items():
            rows.append(
                [
                    p["backbone"],
                    p["params"],
                    fmt,
                    round(f["file_bytes"] / 1e6, 2),
                    f["export_seconds"],
                    f["check_parity_seconds"],
                    f["check_seconds"],
                ]
            )
        if "error" in p:
            rows.append([p["backbone"], None, p["error"], None, None, None, None])
    _plot_export(points, args.formats, args.png, title=f"{args.img_size} px, {images} images, quant {args.quant}")
    return {"images": images, "points": points}, markdown_table(header, rows)


def _cache_used(point: dict) -> str | None:
    cache = point.get("data_cache")
    return f"{cache['images']} / {cache['features']}" if cache else None


def _summary(point: dict) -> str:
    if "error" in point:
        return f"failed: {point['error']}"
    return (
        f"train {point['timings_seconds']['total_train_seconds']} s, "
        f"{point['train_ms_per_image_epoch']} ms/image·epoch, peak RSS {point['peak_rss_mb']} MB "
        f"(setup {point['peak_rss_mb_after']['setup']} MB), cache {_cache_used(point)}"
    )


def _remove_links(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(points: list[dict], x_key: str, x_label: str, png: Path, *, log_x: bool, series: str, title: str) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(p[series] for p in points):
        done = [p for p in points if p[series] == name and "error" not in p]
        if not done:
            continue
        xs = [p[x_key] for p in done]
        left.plot(xs, [p["train_ms_per_image_epoch"] for p in done], "o-", label=f"{series}={name}")
        right.plot(xs, [p["peak_rss_mb"] for p in done], "o-", label=f"peak, {series}={name}")
        right.plot(
            xs,
            [p["peak_rss_mb_after"]["setup"] for p in done],
            ":",
            color="grey",
            label="after model build" if name == points[0][series] else None,
        )
    ticks = sorted({p[x_key] for p in points})
    for axis, ylabel in ((left, "train time per image per epoch (ms)"), (right, "peak RSS (MB)")):
        axis.set_xlabel(x_label)
        axis.set_ylabel(ylabel)
        if log_x:
            axis.set_xscale("log")
            axis.minorticks_off()
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save_figure(plt, fig, png, title)


def _save_figure(plt, fig, png: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"plot: {png}")


def _plot_export(points: list[dict], formats: list[str], png: Path, title: str) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    done = sorted((p for p in points if "error" not in p), key=lambda p: p["params"])
    params = [p["params"] / 1e6 for p in done]
    for fmt in formats:
        left.plot(params, [p["formats"][fmt]["export_seconds"] for p in done], "o-", label=f"export {fmt}")
        right.plot(
            params, [p["formats"][fmt]["check_parity_seconds"] for p in done], "o-", label=f"check {fmt} (parity)"
        )
        right.plot(
            params, [p["formats"][fmt]["check_seconds"] for p in done], "s--", label=f"check {fmt} (with latency)"
        )
    for index, (p, x) in enumerate(zip(done, params)):  # alternate above/below: neighbours never collide
        left.annotate(
            p["backbone"],
            (x, p["formats"][formats[0]]["export_seconds"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 6 if index % 2 == 0 else -12),
        )
    for axis, ylabel in ((left, "export time (s)"), (right, "check time (s)")):
        axis.set_xlabel("parameters (millions)")
        axis.set_ylabel(ylabel)
        axis.set_xscale("log")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save_figure(plt, fig, png, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["images", "sizes", "export"])
    parser.add_argument("data", type=Path)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000, 20000, 60000], help="images mode")
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help="images per point in sizes (default 5000) and export (default 300) modes",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 224], help="sizes mode")
    parser.add_argument(
        "--image-cache",
        nargs="+",
        default=["auto"],
        choices=["auto", "memory", "disk", "none"],
        help="one curve per mode (images and sizes modes)",
    )
    parser.add_argument("--backbone", default="efficientnet_lite0", help="images and sizes modes")
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["cnn_small", "cnn_medium", "efficientnet_lite0", "mobilenet_v2"],
        help="export mode",
    )
    parser.add_argument("--weights", default=None, help="default: imagenet (images, sizes), none (export)")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fine-tune-epochs", type=int, default=1)
    parser.add_argument("--unfreeze-layers", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--formats", nargs="+", default=["tflite", "onnx"], help="export mode")
    parser.add_argument("--quant", default="none", help="export mode")
    parser.add_argument("--check-images", type=int, default=200, help="export mode: images each check predicts")
    parser.add_argument("--name", default=None, help="results file name (default: scaling_MODE)")
    args = parser.parse_args()
    args.weights = args.weights or ("none" if args.mode == "export" else "imagenet")
    args.count = args.count or (300 if args.mode == "export" else 5000)
    name = args.name or f"scaling_{args.mode}"
    RESULTS.mkdir(exist_ok=True)
    args.png = RESULTS / f"{name}.png"

    by_class = image_files(args.data)
    sweep = {"images": sweep_images, "sizes": sweep_sizes, "export": sweep_export}[args.mode]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgexfer-scaling-") as tmp:
        result, table = sweep(args, by_class, Path(tmp))
    print(table)
    save(
        name,
        {
            "mode": args.mode,
            "data": str(args.data),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            **result,
            "table_markdown": table,
            "plot": str(args.png),
            "sweep_seconds": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
