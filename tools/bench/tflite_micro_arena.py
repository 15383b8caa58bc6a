"""The tflite-micro export's tensor-arena estimate against TensorFlow Lite Micro itself.

    pip install tflite-micro ai-edge-litert numpy        # a separate venv: not an edgexfer dependency
    python bench/tflite_micro_arena.py MICRO_EXPORT_DIR [MORE ...]

For each ``edgexfer export --format tflite-micro`` artifact: the smallest arena (to 64 bytes) with
which the TFLite Micro interpreter (the ``tflite-micro`` Python package, the reference kernels)
allocates the model, against ``EDGEXFER_TENSOR_ARENA_SIZE`` of its ``model.h``; and the
int8 output of TFLite Micro against LiteRT's on the same random int8 input (the same bytes
must give the same answer). Prints one JSON object per artifact; needs no edgexfer.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np


def main(paths):
    from ai_edge_litert.interpreter import Interpreter
    from tflite_micro.python.tflite_micro import runtime

    for path in map(Path, paths):
        content = (path / "model.tflite").read_bytes()
        estimate = int(re.search(r"EDGEXFER_TENSOR_ARENA_SIZE (\d+)u", (path / "model.h").read_text()).group(1))

        def allocates(size, content=content):
            try:
                runtime.Interpreter.from_bytes(content, arena_size=size)
                return True
            except Exception:  # noqa: BLE001 - TFLM raises RuntimeError on a failed AllocateTensors
                return False

        high = estimate
        while not allocates(high):
            high *= 2
        low = 0
        while high - low > 64:
            middle = (low + high) // 2
            low, high = (low, middle) if allocates(middle) else (middle, high)
        micro = runtime.Interpreter.from_bytes(content, arena_size=max(estimate, high))
        shape = micro.get_input_details(0)["shape"]
        x = np.random.default_rng(0).integers(-128, 128, size=shape, dtype=np.int8)
        micro.set_input(x, 0)
        micro.invoke()
        lite = Interpreter(model_content=content)
        lite.allocate_tensors()
        lite.set_tensor(lite.get_input_details()[0]["index"], x)
        lite.invoke()
        y_lite = lite.get_tensor(lite.get_output_details()[0]["index"])
        print(
            json.dumps(
                {
                    "artifact": str(path),
                    "model_bytes": len(content),
                    "estimate_bytes": estimate,
                    "smallest_arena_that_allocates": high,
                    "estimate_over_needed": round(estimate / high, 3),
                    "max_int8_diff_tflm_vs_litert": int(
                        np.abs(micro.get_output(0).astype(int) - y_lite.astype(int)).max()
                    ),
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
