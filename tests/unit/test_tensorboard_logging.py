"""``tensorboard_logging`` is scoped to its block and its thread (a run in another thread does not log into it)."""

import threading

from edgexfer.train.common import tensorboard_logging, tensorboard_writer


def _active() -> bool:
    # tensorboard_writer returns None without importing TensorFlow when no directory is set;
    # with one it would build a writer, so probe only where the answer must be "not active".
    return tensorboard_writer("probe") is not None


def test_logging_stays_in_its_block_and_its_thread(tmp_path):
    seen_in_thread = []
    with tensorboard_logging(tmp_path / "a"), tensorboard_logging(None):  # None leaves the setting
        thread = threading.Thread(target=lambda: seen_in_thread.append(_active()))
        thread.start()
        thread.join()
    assert seen_in_thread == [False]  # another thread (another run) does not log into this run's directory
    assert not _active()  # and nothing is left behind after the block
