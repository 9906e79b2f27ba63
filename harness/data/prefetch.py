"""Overlap of data with compute: batch n+1 is gathered, copied and augmented on a background thread while step n runs.

On CUDA the thread issues its work on a side stream; the training stream waits for that batch's event before using
it (no host wait) and the batch's tensors are recorded on the training stream so the caching allocator does not reuse
their memory early. The batches and their order are exactly those of the wrapped iterator: every random draw of the
data path (batch order, augmentation) is made by that iterator, in the same order, so prefetching changes no result;
it only runs ahead by at most `depth` batches and never past the iterator's end (the trainer wraps one epoch at a
time, so an epoch checkpoint sees the batch-order generator exactly as without prefetching).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Iterable, Iterator

import torch

from harness.core.devices import cuda_switch

_END = object()


class Prefetcher:
    """Iterate `batches` (tuples of tensors) up to `depth` items ahead on a daemon thread."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device, depth: int = 2):
        self.batches = batches
        self.device = device
        self.depth = depth

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        cuda = self.device.type == "cuda"

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            stream = torch.cuda.Stream(self.device) if cuda else None
            try:
                with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    for item in self.batches:
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                        if not put((item, event)):
                            return
                put((_END, None))
            except BaseException as exc:  # re-raised in the consumer, with its traceback
                put((exc, None))

        thread = threading.Thread(target=work, name="prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item, event = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in item:
                        t.record_stream(current)
                yield item
        finally:
            stop.set()
            thread.join()


def use_prefetch(setting: str, device: torch.device) -> bool:
    """`auto`: on for CUDA (the data path then overlaps the GPU's work), off on CPU (where the two compete for the
    same cores and the thread hand-off is pure overhead); `on`/`off` force it."""
    return cuda_switch(setting, device, "data prefetch")
