"""Stopping a run whose data do not fit the model, instead of "training" on nothing.

Samples that cannot be used are dropped and counted where they are read: corrupt ones by the
shard reader (``skipped_samples``), invalid ones (a token grid of another size, an id outside
the vocabulary, a float or bool grid) by the masking in the data workers (``invalid_samples``).
A few are normal; a run where most or all are dropped is a mistake (shards tokenised for another
grid or vocabulary, a shard folder of garbage) and would otherwise finish with loss NaN and a
saved model. :class:`DataGuard` watches the micro-batches of one process and names the problem:

* no valid sample in the last ``data_check.window`` micro-batches (or, in a shorter run, none
  at all by its last step);
* more than ``data_check.max_invalid_fraction`` of the samples read so far invalid (checked from
  the ``window``-th micro-batch on, so that a first unlucky batch does not stop a run).

The trainer folds the verdict into the step's single synchronisation, so every process raises
:class:`InvalidDataError` at the same step.
"""
from __future__ import annotations

from fourm.errors import FourmError
from fourm.training.config import DataCheckConfig
from fourm.training.task import MicroBatch

FIX = ("make the shards fit the model's modalities (grid, vocab_size, the fields the run reads; see the shards' "
       "metadata.json) or fix the data")


class InvalidDataError(FourmError, RuntimeError):
    """The training data stopped the run (no valid sample in a window, or too many invalid ones)."""


class DataGuard:
    """Counts the valid, invalid and empty micro-batches of one process.

    Args:
        config: the run's ``data_check`` section.
        rank: this process (named in the message).
    """

    def __init__(self, config: DataCheckConfig, rank: int = 0) -> None:
        self.config, self.rank = config, rank
        self.batches = self.empty_in_a_row = self.valid_batches = 0
        self.samples = self.invalid = 0
        self.example = ""  # one invalid sample and why, for the message

    def update(self, mb: MicroBatch) -> None:
        """Account for one micro-batch as the stream delivered it."""
        self.batches += 1
        self.invalid += mb.invalid
        if mb.invalid_detail:
            self.example = mb.invalid_detail
        if mb.batch is None:
            self.empty_in_a_row += 1
        else:
            self.empty_in_a_row = 0
            self.valid_batches += 1
            self.samples += mb.samples

    def _why(self) -> str:
        if not self.invalid:
            return "the shard reader skipped every sample as unreadable (corrupt or not shards; see its warnings)"
        return f"{self.invalid} samples dropped as invalid" + (f", e.g. {self.example}" if self.example else "")

    def problem(self, final: bool = False) -> str | None:
        """What is wrong with the data so far, or None.

        Args:
            final: this is the run's last step (a run shorter than the window must have seen a
                valid sample by now).
        """
        cfg, where = self.config, f"process {self.rank}" if self.rank else "the data"
        if self.empty_in_a_row >= cfg.window:
            return (f"no valid sample in the last {self.empty_in_a_row} micro-batches of {where} "
                    f"(data_check.window={cfg.window}): {self._why()}. Fix: {FIX}")
        if final and self.valid_batches == 0 and self.batches:
            return (f"the run ended without one valid sample in {self.batches} micro-batches of {where}: "
                    f"{self._why()}. Fix: {FIX}")
        read = self.samples + self.invalid
        if self.batches >= cfg.window and read and self.invalid / read > cfg.max_invalid_fraction:
            return (f"{self.invalid} of {read} samples ({self.invalid / read:.0%}) read by {where} were invalid, more "
                    f"than data_check.max_invalid_fraction={cfg.max_invalid_fraction:g}"
                    + (f"; e.g. {self.example}" if self.example else "")
                    + f". Fix: {FIX}, or raise data_check.max_invalid_fraction")
        return None
