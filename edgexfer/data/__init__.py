"""Image-folder datasets → tf.data; splits; bundled real datasets.

Importing this package imports no TensorFlow (only :mod:`edgexfer.data.pipeline`'s
functions do, when called).
"""

from edgexfer.data.bundled import DatasetInfo, list_datasets, prepare_dataset
from edgexfer.data.folder import IMAGE_EXTENSIONS, ImageDataset, Sample, scan_image_folder
from edgexfer.data.pipeline import data_errors, load_arrays, make_dataset
from edgexfer.data.preprocess import load_image, preprocess_array

__all__ = [
    "DatasetInfo",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "Sample",
    "data_errors",
    "list_datasets",
    "load_arrays",
    "load_image",
    "make_dataset",
    "prepare_dataset",
    "preprocess_array",
    "scan_image_folder",
]
