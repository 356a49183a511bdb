"""Per-epoch training metrics as TensorBoard event files, written and read back without TensorFlow.

The train stage writes them into its model folder (`logs/`), one scalar per metric per epoch, flushed at
each epoch's end: `tensorboard --logdir`, Vertex TensorBoard and `photo-detector runs get --metrics` can
follow a running job. A resumed run appends a new event file to the same folder.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

TAGS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
        "learning_rate", "images_per_second", "gpu_peak_memory_mib")


def tag_for(metric: str) -> str:
    group = "train" if metric.startswith("train_") else "val" if metric.startswith("val_") else "run"
    return f"{group}/{metric}"


class EpochLog:
    """A tensorboardX writer with one `epoch(row)` call per epoch."""

    def __init__(self, folder: Path) -> None:
        from tensorboardX import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(str(folder), flush_secs=10)

    def epoch(self, row: dict[str, float]) -> None:
        for metric in TAGS:
            if metric in row:
                self.writer.add_scalar(tag_for(metric), float(row[metric]), int(row["epoch"]))
        self.writer.flush()  # each epoch is visible at once, not at the next flush interval

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_scalars(folder: str | Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file under `folder` (TFRecord framing, Event protos); a later
    file wins for a repeated step, as TensorBoard shows it."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            record = data[pos + 12:pos + 12 + length]
            if len(record) < length:
                break  # a record still being written
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                out[value.tag][int(event.step)] = float(value.simple_value)
    return dict(out)
