"""Optional wall-clock timers for device code.

Kernels on a GPU run asynchronously, so a timer must synchronise the device at both ends
to measure anything. That stalls the pipeline, so the engine times only when asked:
``device_timer(None, ...)`` is a free no-op and the step loop then never synchronises.
"""
from contextlib import contextmanager, nullcontext

import torch


@contextmanager
def _synced(timers, name, device):
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    with timers(name):
        yield
        if cuda:
            torch.cuda.synchronize(device)


def device_timer(timers, name, device):
    """``with device_timer(timers, "fft", device):`` books the block's time under ``name``
    in a :class:`cosmonet.timing.Timers` (synchronising a CUDA device at both ends);
    does nothing when ``timers`` is None."""
    if timers is None:
        return nullcontext()
    return _synced(timers, name, device)
