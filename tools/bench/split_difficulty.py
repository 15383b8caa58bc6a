"""Are the held-out splits that different seeds carve equally hard?

    python tools/bench/split_difficulty.py FOLDER [--seeds 0 1 2] [--inits 4] [--name NAME]

Each seed carves FOLDER as every edgexfer run does (stratified, 10 % val, 10 % test). One
plain CNN, independent of edgexfer's models (two 3×3 convolutions per stage, 28 px grey), trains
on the images that are in none of the test splits and is scored on each; ``--inits``
initialisations give the spread. A split that this model scores lower on is harder, whatever
model a run then trains. Results: ``tools/bench/results/split_difficulty[_NAME].json``.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
from _common import save


def held_out_splits(folder: str, seeds: list[int]) -> tuple[dict[int, list], list]:
    """Each seed's test samples, and every sample of the folder."""
    from edgexfer.data import scan_image_folder

    tests, every = {}, []
    for seed in seeds:
        dataset = scan_image_folder(folder, seed=seed, val_fraction=0.1, test_fraction=0.1)
        tests[seed] = list(dataset.splits["test"])
        every = [s for name in ("train", "val", "test") for s in dataset.splits[name]]
    return tests, every


def grey_arrays(samples: list) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images = [np.asarray(Image.open(s.path).convert("L").resize((28, 28)), np.float32) / 255.0 for s in samples]
    return np.stack(images)[..., None], np.array([s.label for s in samples])


def plain_cnn(keras, classes: int):
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(128, activation="relu"),
            layers.Dense(classes),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--inits", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    tests, every = held_out_splits(args.folder, args.seeds)
    held_out = {s.path for samples in tests.values() for s in samples}
    x_train, y_train = grey_arrays([s for s in every if s.path not in held_out])
    scored = {seed: grey_arrays(samples) for seed, samples in tests.items()}
    accuracy: dict[int, list[float]] = {seed: [] for seed in tests}
    for init in range(args.inits):
        keras.utils.set_random_seed(init)
        model = plain_cnn(keras, int(y_train.max()) + 1)
        model.compile(
            keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
        )
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
        for seed, (x, y) in scored.items():
            accuracy[seed].append(float((model.predict(x, verbose=0).argmax(1) == y).mean()))
    result = {
        "train_images": int(len(y_train)),
        "test_images": {str(seed): len(samples) for seed, samples in tests.items()},
        "shared_test_images": {
            f"{a}&{b}": len({s.path for s in tests[a]} & {s.path for s in tests[b]})
            for i, a in enumerate(args.seeds)
            for b in args.seeds[i + 1 :]
        },
        "accuracy": {
            str(seed): {"mean": statistics.fmean(values), "std": statistics.stdev(values), "values": values}
            for seed, values in accuracy.items()
        },
    }
    save(f"split_difficulty{'_' + args.name if args.name else ''}", result)
    for seed, values in accuracy.items():
        print(f"split of seed {seed}: {statistics.fmean(values):.2%} ± {statistics.stdev(values):.2%}")


if __name__ == "__main__":
    main()
