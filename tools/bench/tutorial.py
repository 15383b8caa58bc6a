"""edgexfer's default road against the common transfer-learning tutorial recipe.

    python tools/bench/tutorial.py --dataset fashion|mnist|digits [--max-train-images N] [--budget-seconds S]
                             [--arms edgexfer,vgg16,lite0] [--vgg-weights imagenet|none|PATH]
                             [--recipe-img-size 224] [--max-test-images 2000] [--work DIR]

Arms, each trained in a fresh process (its own peak RSS), on the same train/val/test split:

* ``edgexfer``: the road of ``models/digits.yaml`` (mnist, digits) or ``models/fashion-mnist.yaml``
  (fashion) through the Python API: fine-tuned EfficientNet-Lite0 (ImageNet) → distilled student →
  50 % pruned → QAT → int8 TFLite, the stages' options read from the YAML. No domain adaptation:
  the student distils the fine-tuned teacher on the training folder only (no arm sees uci-digits
  before it is evaluated on it). Its training time is the wall time of the four training stages
  (their own evaluations included, which favours the recipes); override a stage option with
  ``--set STAGE.KEY=VALUE`` (e.g. ``--set distill.epochs=1`` for a smoke run).
* ``vgg16``: the tutorial recipe: VGG16 (``--vgg-weights``) frozen, Flatten → Dense(256, relu) →
  Dense(classes, softmax), Adam, batch 32, images rescaled to [0, 1] at ``--recipe-img-size``
  (224), the frozen backbone run on every batch; exported as float TFLite by the TFLite converter.
  Keras' VGG16 ImageNet weights are a download: offline, run it with ``--vgg-weights none``
  (random frozen features) or a local file, and the results record which.
* ``lite0``: the same tutorial head and training on frozen EfficientNet-Lite0 with its real
  ImageNet weights (edgexfer's offline registry) at the same size, scaled as that backbone
  expects: an accuracy reference with real pretrained features when VGG16's are not installable.

The recipes get the same training wall-clock budget as the edgexfer arm (``--budget-seconds``
overrides it): they train, epoch after epoch, until the next batch would end past the budget.
Every deployed ``.tflite`` is then measured in a fresh TensorFlow-free process with LiteRT:
batch-1 latency on 1 thread (edgexfer's latency helpers), that process's peak RSS, file size,
and accuracy on the test split (and on uci-digits for ``--dataset digits``, trained on mnist-5k).
Results: ``tools/bench/results/tutorial_<dataset>.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import call_in_subprocess, markdown_table, save

REPO = Path(__file__).resolve().parents[2]  # tools/bench/tutorial.py → the repository
ARMS = ("edgexfer", "vgg16", "lite0")
ARM_LABELS = {
    "edgexfer": "edgexfer: Lite0 fine-tuned → distilled student → QAT int8",
    "vgg16": "tutorial recipe, VGG16 frozen, float TFLite",
    "lite0": "tutorial recipe, Lite0 backbone (VGG16 ImageNet weights not installable offline), float TFLite",
}
# name: (bundled dataset, folder under --data-root, prepare limit, pipeline whose road is run, cross-domain)
DATASETS = {
    "fashion": ("fashion-mnist", "fashion20k", 20000, "models/fashion-mnist.yaml", None),
    "mnist": ("mnist-5k", "mnist5k", None, "models/digits.yaml", None),
    "digits": ("mnist-5k", "mnist5k", None, "models/digits.yaml", ("uci-digits", "uci")),
}
ROAD_STAGES = ("finetune", "distill", "prune", "quantize")
# Pipeline references, not stage options. ``unlabelled`` (digits.yaml distils on unlabelled target
# images too) is dropped with them: no arm of this bench sees the cross-domain images before evaluation.
NOT_OPTIONS = ("type", "data", "teacher", "parent", "unlabelled")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- arms
# Each runs in a fresh process (call_in_subprocess) and prints its JSON result last.


def arm_edgexfer(spec: dict) -> None:
    """finetune → distill → prune → quantize (QAT) → int8 TFLite, through ``edgexfer.api``."""
    from edgexfer.tf_env import import_tf

    import_tf()  # before the clock: the recipes' clock also starts after TensorFlow is imported
    from edgexfer import api
    from edgexfer.train.common import peak_rss_mb

    work, data, road = Path(spec["work"]), spec["data"], spec["road"]
    seconds, metrics = {}, {}

    def stage(name, run):
        log(f"edgexfer: {name}")
        start = time.perf_counter()
        artifact = run()
        seconds[name] = round(time.perf_counter() - start, 2)
        m = artifact.metrics
        metrics[name] = {
            k: m[k]
            for k in (
                "test_accuracy",
                "val_accuracy",
                "teacher_accuracy",
                "accuracy_after",
                "eval_split",
                "params",
                "params_after",
            )
            if k in m
        }
        log(f"edgexfer: {name} done in {seconds[name]} s")
        return artifact

    teacher = stage("finetune", lambda: api.finetune(data, work / "finetune", **road["finetune"]))
    parent = stage("distill", lambda: api.distill(teacher.path, data, work / "distill", **road["distill"]))
    if road.get("prune") is not None:
        parent = stage("prune", lambda: api.prune(parent.path, data, work / "prune", **road["prune"]))
    quantized = stage("quantize", lambda: api.quantize(parent.path, data, work / "quantize", **road["quantize"]))
    training_seconds = round(sum(seconds.values()), 2)
    train_peak = round(peak_rss_mb(), 1)
    start = time.perf_counter()
    exported = api.export(quantized.path, work / "export_int8", "tflite", "int8")
    print(
        json.dumps(
            {
                "model": str(exported.model_path),
                "training_seconds": training_seconds,
                "stage_seconds": seconds,
                "export_seconds": round(time.perf_counter() - start, 2),
                "train_peak_rss_mb": train_peak,
                "stage_metrics": metrics,
                "student": quantized.manifest.backbone,
                "label_names": quantized.manifest.label_names,
                "input_size": quantized.manifest.preprocessing.input_size,
            }
        )
    )


def arm_recipe(spec: dict) -> None:
    """The tutorial recipe on a frozen backbone, trained until the wall-clock budget is spent."""
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    start = time.perf_counter()  # the budget covers building the model and the data pipeline too
    from edgexfer.artifact import Preprocessing
    from edgexfer.compress.stage_io import limit_samples
    from edgexfer.data import make_dataset, scan_image_folder
    from edgexfer.train.common import peak_rss_mb

    size, seed, budget = spec["img_size"], spec["seed"], spec["budget_seconds"]
    keras.utils.set_random_seed(seed)
    dataset = scan_image_folder(spec["data"], seed=seed)
    train = limit_samples(dataset.split("train"), spec["max_train_images"], seed)
    if spec["backbone"] == "vgg16":
        weights = spec["weights"]
        try:
            base = keras.applications.VGG16(
                include_top=False, input_shape=(size, size, 3), weights=None if weights == "none" else weights
            )
        except Exception as exc:  # Keras raises a bare Exception for a failed download
            sys.exit(
                f"VGG16 weights {weights!r} unavailable ({str(exc).splitlines()[0]}); offline, pass "
                "--vgg-weights none (random frozen features) or --vgg-weights PATH"
            )
        preprocessing = Preprocessing(input_size=size, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))
    else:
        from edgexfer.backbones.registry import create_backbone, get_backbone

        features = create_backbone("efficientnet_lite0", size, "imagenet")
        base = keras.Model(features.input, features.get_layer("head_relu").output, name="efficientnet_lite0")
        preprocessing = get_backbone("efficientnet_lite0").preprocessing(size)
    base.trainable = False
    model = keras.Sequential(
        [
            base,
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(dataset.num_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Decoded from disk each epoch, as the tutorial's ImageDataGenerator does (no image cache in memory).
    train_ds = make_dataset(train, preprocessing, batch_size=spec["batch_size"], shuffle=True, seed=seed, cache=False)
    steps_per_epoch = -(-len(train) // spec["batch_size"])

    class Budget(keras.callbacks.Callback):
        """Stop when the next batch would end past the budget (one batch's time ahead)."""

        steps, last, stopped, logged = 0, 0.0, False, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.steps += 1
            self.last = now - self.began
            if now - start + self.last > budget:
                self.model.stop_training = self.stopped = True

        def on_epoch_end(self, epoch, logs=None):
            if time.perf_counter() - self.logged < 30 and not self.stopped:
                return  # at most one line every 30 s
            self.logged = time.perf_counter()
            log(
                f"{spec['arm']}: epoch {epoch + 1} ({self.steps} steps, {time.perf_counter() - start:.0f} s of "
                f"{budget:.0f}): loss {logs['loss']:.4f}, accuracy {logs['accuracy']:.4f}"
            )

    callback = Budget()
    log(f"{spec['arm']}: {len(train)} train images at {size}px, budget {budget:.0f} s")
    history = model.fit(train_ds, epochs=spec["max_epochs"] or 1_000_000, callbacks=[callback], verbose=0)
    training_seconds = round(time.perf_counter() - start, 2)
    train_peak = round(peak_rss_mb(), 1)

    start = time.perf_counter()
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()  # float, as the tutorial exports
    out = Path(spec["work"]) / spec["arm"] / "model.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(content)
    print(
        json.dumps(
            {
                "model": str(out),
                "training_seconds": training_seconds,
                "export_seconds": round(time.perf_counter() - start, 2),
                "train_peak_rss_mb": train_peak,
                "steps": callback.steps,
                "steps_per_epoch": steps_per_epoch,
                "epochs": round(callback.steps / steps_per_epoch, 3),
                "images_seen": callback.steps * spec["batch_size"],
                "stopped_by_budget": callback.stopped,
                "train_images": len(train),
                "history": {k: [round(float(v), 5) for v in vs] for k, vs in history.history.items()},
                "params": int(model.count_params()),
                "trainable_params": int(sum(int(tf.size(w)) for w in model.trainable_weights)),
                "label_names": dataset.class_names,
                "preprocessing": preprocessing.to_dict(),
            }
        )
    )


def measure_deployed(spec: dict) -> None:
    """In a fresh process without TensorFlow: batch-1 latency on 1 thread (LiteRT), this process's
    peak RSS after it, file size; then accuracy per domain with every core."""

    from ai_edge_litert.interpreter import Interpreter  # noqa: F401 - imported before the RSS baseline

    from edgexfer.artifact import Preprocessing
    from edgexfer.data import load_arrays, scan_image_folder
    from edgexfer.data.subset import stratified_subset
    from edgexfer.evaluate import latency as lat
    from edgexfer.evaluate.macs import model_file_macs
    from edgexfer.runtime import load_model, normalize
    from edgexfer.train.common import peak_rss_mb

    labels, overrides = spec["label_names"], {}
    if spec.get("preprocessing"):  # a plain TFLite file, not exported by edgexfer: say what it takes
        overrides = dict(label_names=labels, preprocessing=Preprocessing.from_dict(spec["preprocessing"]))

    def samples(domain):
        dataset = scan_image_folder(domain["data"], class_names=labels, seed=spec["seed"])
        chosen = dataset.split(domain["split"]) if domain["split"] != "all" else dataset.all_samples()
        return stratified_subset(chosen, domain["max_images"], seed=spec["seed"]) if domain["max_images"] else chosen

    domains = {name: samples(domain) for name, domain in spec["domains"].items()}
    first = next(iter(domains.values()))[:1]
    import gc

    gc.collect()
    rss_before = _current_rss_mb()  # Python, numpy, LiteRT imported: what any deployment pays
    model = load_model(spec["model"], num_threads=1, **overrides)
    rss_loaded = _current_rss_mb()
    x = normalize(load_arrays(first, model.preprocessing)[0], model.preprocessing)
    settings = lat.LatencySettings(
        warmup=spec["warmup"], runs=spec["runs"], batch_size=1, threads=(1,), max_seconds=spec["max_seconds"]
    )
    latency = lat.measure(model.invoke_fn, x, settings, runtime="litert-xnnpack", threads=1, threads_used=1)
    peak = round(peak_rss_mb(), 1)
    del model

    model = load_model(spec["model"], num_threads=lat.resolve_threads(0), **overrides)
    accuracy, counts = {}, {}
    start = time.perf_counter()
    for name, chosen in domains.items():
        correct = 0
        for i in range(0, len(chosen), 256):
            pixels, labels = load_arrays(chosen[i : i + 256], model.preprocessing)
            correct += int((model.predict_proba(pixels, batch_size=32).argmax(1) == labels).sum())
        accuracy[name], counts[name] = correct / len(chosen), len(chosen)
    print(
        json.dumps(
            {
                "size_bytes": Path(spec["model"]).stat().st_size,
                "macs": model_file_macs(spec["model"]),  # None for a file LiteRT/onnx cannot count
                "latency": latency,
                "batch1_p50_ms": lat.batch1_p50(latency),
                "deploy_peak_rss_mb": peak,
                "rss_before_load_mb": rss_before,
                "rss_after_load_mb": rss_loaded,
                "accuracy": accuracy,
                "eval_images": counts,
                "eval_seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def _current_rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


# ---------------------------------------------------------------------------------- main


def road_options(pipeline: Path, max_train_images: int | None, seed: int, overrides: list[str]) -> dict:
    """The finetune/distill/prune/quantize options of a pipeline YAML, plus ``--set`` overrides."""
    import yaml

    stages = yaml.safe_load(pipeline.read_text())["stages"]
    road = {}
    for name in ROAD_STAGES:
        if name in stages:
            road[name] = {k: v for k, v in (stages[name] or {}).items() if k not in NOT_OPTIONS}
            road[name].update(max_train_images=max_train_images, seed=seed)
    # A diagnostic (the student trained again without the teacher), not part of the deployed road.
    road["distill"]["baseline"] = False
    for item in overrides:
        key, _, value = item.partition("=")
        stage, _, option = key.partition(".")
        if stage not in road or not option or not _:
            raise SystemExit(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(road)}")
        road[stage][option] = yaml.safe_load(value)
    return road


def prepare(root: Path, name: str, folder: str, limit: int | None) -> str:
    path = root / folder
    if not path.is_dir():
        from edgexfer import api

        log(f"preparing {name} in {path}")
        api.prepare_data(name, path, limit=limit)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-root", default="/tmp/d", help="where the bundled datasets are (prepared if missing)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--max-train-images", type=int, default=None, help="a stratified subset of the train split")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="the recipes' training budget; default: the edgexfer arm's measured training time",
    )
    parser.add_argument("--vgg-weights", default="imagenet", help="imagenet | none | PATH (Keras .h5, headless)")
    parser.add_argument("--recipe-img-size", type=int, default=224)
    parser.add_argument("--recipe-batch-size", type=int, default=32)
    parser.add_argument("--recipe-max-epochs", type=int, default=0, help="0: until the budget is spent")
    parser.add_argument(
        "--max-test-images",
        type=int,
        default=2000,
        help="accuracy on a stratified subset of at most N images per domain (0: all)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override an option of the edgexfer road (repeatable)",
    )
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="max timed seconds per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep the trained artifacts here (default: a temporary folder)")
    parser.add_argument("--name", default=None, help="results name (default tutorial_<dataset>)")
    args = parser.parse_args()

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms {args.arms!r}: choose from {', '.join(ARMS)}")
    if "edgexfer" not in arms and args.budget_seconds is None and set(arms) & {"vgg16", "lite0"}:
        parser.error("without the edgexfer arm, pass --budget-seconds for the recipes")
    if "vgg16" in arms and args.vgg_weights == "imagenet":
        _check_vgg_imagenet(parser)
    bundled, folder, limit, pipeline, cross = DATASETS[args.dataset]
    root = Path(args.data_root)
    data = prepare(root, bundled, folder, limit)
    domains = {bundled: {"data": data, "split": "test", "max_images": args.max_test_images or None}}
    if cross:
        domains[cross[0]] = {
            "data": prepare(root, cross[0], cross[1], None),
            "split": "all",
            "max_images": args.max_test_images or None,
        }
    road = road_options(REPO / pipeline, args.max_train_images, args.seed, args.set)

    work_root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_tutorial_"))
    work = work_root / f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    results: dict[str, dict] = {}
    name = args.name or f"tutorial_{args.dataset}"

    def record(complete: bool) -> dict:
        summary = _summary(results, bundled)
        table = _table(results, domains, bundled, cross) if results else ""
        save(
            name,
            {
                "complete": complete,
                "dataset": args.dataset,
                "data": data,
                "domains": domains,
                "arms": results,
                "vgg16_weights": args.vgg_weights if "vgg16" in arms else None,
                "budget_seconds": budget,
                "budget_source": "--budget-seconds"
                if args.budget_seconds is not None
                else "the edgexfer arm's measured training time",
                "road": road,
                "pipeline": pipeline,
                "recipe": {
                    "img_size": args.recipe_img_size,
                    "batch_size": args.recipe_batch_size,
                    "optimizer": "Adam(1e-3)",
                    "head": "Flatten → Dense(256, relu) → Dense(classes, softmax)",
                    "input": "[0, 1] (VGG16); the backbone's own scaling (Lite0)",
                    "max_epochs": args.recipe_max_epochs or "until the budget is spent",
                },
                "summary": summary,
                "table": table,
                "kept_artifacts": str(work) if args.work else None,
            },
        )
        return {"summary": summary, "table": table}

    budget = args.budget_seconds
    try:
        for arm in arms:
            log(f"arm {arm}")
            if arm == "edgexfer":
                results[arm] = call_in_subprocess(
                    __file__, "arm_edgexfer", {"work": str(work / "edgexfer"), "data": data, "road": road}
                )
                if budget is None:
                    budget = results[arm]["training_seconds"]
            else:
                results[arm] = call_in_subprocess(
                    __file__,
                    "arm_recipe",
                    {
                        "arm": arm,
                        "backbone": arm,
                        "weights": args.vgg_weights if arm == "vgg16" else "imagenet",
                        "img_size": args.recipe_img_size,
                        "seed": args.seed,
                        "budget_seconds": budget,
                        "data": data,
                        "max_train_images": args.max_train_images,
                        "batch_size": args.recipe_batch_size,
                        "max_epochs": args.recipe_max_epochs,
                        "work": str(work),
                    },
                )
            log(f"arm {arm}: measuring the deployed file")
            deployed = call_in_subprocess(
                __file__,
                "measure_deployed",
                {
                    "model": results[arm]["model"],
                    "label_names": results[arm].get("label_names"),
                    "preprocessing": results[arm].get("preprocessing"),
                    "domains": domains,
                    "seed": args.seed,
                    "warmup": 3,
                    "runs": args.latency_runs,
                    "max_seconds": args.latency_seconds,
                },
            )
            results[arm].update(deployed=deployed, label=ARM_LABELS[arm])
            if arm == "vgg16":
                results[arm]["vgg16_weights"] = args.vgg_weights
            if arm == "lite0":
                results[arm]["backbone_weights"] = "imagenet (EfficientNet-Lite0, edgexfer's offline registry)"
            if arm != arms[-1]:
                record(complete=False)  # a later arm that fails does not lose this one
    finally:
        if not args.work:
            shutil.rmtree(work_root, ignore_errors=True)
    final = record(complete=True)
    print(final["table"])
    print(json.dumps(final["summary"], indent=1))


def _check_vgg_imagenet(parser) -> None:
    """Fail before any training when Keras cannot get VGG16's ImageNet weights (offline)."""
    code = (
        "from edgexfer.tf_env import import_tf; _, keras = import_tf(); "
        "keras.applications.VGG16(include_top=False, weights='imagenet', input_shape=(32, 32, 3))"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        parser.error(
            f"--vgg-weights imagenet: Keras cannot get VGG16's ImageNet weights here ({why}); "
            "pass --vgg-weights none (random frozen features) or --vgg-weights PATH"
        )


def _summary(results: dict, in_domain: str) -> dict:
    """Ratios of every recipe to the edgexfer int8 student, and the issue's three claims."""
    if "edgexfer" not in results:
        return {}
    ours = results["edgexfer"]["deployed"]
    summary = {}
    for arm, result in results.items():
        if arm == "edgexfer":
            continue
        theirs = result["deployed"]
        smaller = theirs["size_bytes"] / ours["size_bytes"]
        faster = theirs["batch1_p50_ms"] / ours["batch1_p50_ms"]
        gain = {d: round(100 * (ours["accuracy"][d] - theirs["accuracy"][d]), 2) for d in ours["accuracy"]}
        memory = theirs["deploy_peak_rss_mb"] - theirs["rss_before_load_mb"]
        memory_ours = ours["deploy_peak_rss_mb"] - ours["rss_before_load_mb"]
        summary[arm] = {
            "times_smaller": round(smaller, 1),
            "times_faster_batch1": round(faster, 1),
            "deployed_memory_mb_over_runtime": [round(memory_ours, 1), round(memory, 1)],
            "accuracy_gain_points": gain,
            "smaller_20x": smaller >= 20,
            "faster_10x": faster >= 10,
            "at_least_as_accurate": gain[in_domain] >= 0,
        }
    return summary


def _table(results: dict, domains: dict, in_domain: str, cross) -> str:
    from edgexfer.evaluate.formatting import macs

    header = (
        ["arm", f"{in_domain} accuracy"]
        + ([f"{cross[0]} accuracy (cross-domain)"] if cross else [])
        + ["size", "MACs", "p50 batch 1, 1 thread", "peak RSS: training / deployed (model's share)", "training time"]
    )
    rows = []
    for arm, r in results.items():
        d = r["deployed"]
        label = r["label"] + (f" (weights: {r['vgg16_weights']})" if arm == "vgg16" else "")
        acc = [f"{100 * d['accuracy'][name]:.1f} % (n={d['eval_images'][name]})" for name in domains]
        rows.append(
            [
                label,
                *acc,
                _size(d["size_bytes"]),
                macs(d.get("macs")),
                f"{d['batch1_p50_ms']:.3f} ms",
                f"{r['train_peak_rss_mb']:,.0f} / {d['deploy_peak_rss_mb']:,.0f} MB "
                f"(+{d['deploy_peak_rss_mb'] - d['rss_before_load_mb']:,.0f})",
                f"{r['training_seconds']:.0f} s" + (f" ({r['epochs']} epochs)" if "epochs" in r else ""),
            ]
        )
    return markdown_table(header, rows)


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


if __name__ == "__main__":
    main()
