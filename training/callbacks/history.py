"""Write the training history to CSV after every epoch, with the learning rate in an ``lr`` column.

Columns: epoch, loss, accuracy, val_loss, val_accuracy, lr, then any other logged values sorted.
The file is rewritten each epoch, so an interrupted run still leaves a readable history. One
instance records consecutive ``fit`` calls (``initial_epoch`` continuing where the last stopped).

Example::

    model.fit(..., callbacks=[HistoryCSV("out/history.csv")])
"""

from __future__ import annotations

import csv
from pathlib import Path

import keras

_FIRST = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


class HistoryCSV(keras.callbacks.Callback):
    """Record each epoch's logs plus the learning rate reached at the end of the epoch.

    Args:
        path: CSV file to write.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []

    def resume(self, epochs_done: int) -> None:
        """Keep the rows of the first ``epochs_done`` epochs already in the file (after a restore
        from a backup), so the history stays whole across a restart."""
        self.rows = []
        if self.path.is_file():
            with self.path.open(newline="") as handle:
                self.rows = [{key: float(value) for key, value in row.items() if value != ""}
                             for row in csv.DictReader(handle) if float(row["epoch"]) <= epochs_done]
            for row in self.rows:
                row["epoch"] = int(row["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        # One instance may serve several fit() calls (two-phase fine-tuning continues at
        # initial_epoch): a repeated epoch replaces the rows from there on.
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]
        logs = dict(logs or {})
        logs.pop("learning_rate", None)
        row = {"epoch": epoch + 1,
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        row.update({key: float(value) for key, value in logs.items()})
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        keys = {key for row in self.rows for key in row}
        columns = [key for key in _FIRST if key in keys] + sorted(keys - set(_FIRST))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
