"""Import FFCV without its one needless compile.

ffcv.fields.rgb_image (imported by every FFCV loader and writer) builds its table of image modes,
{"jpg": 0, "raw": 1}, as a numba typed Dict when it is imported, which compiles the typed Dict's
code: 3.7 s in every process that touches FFCV (each training worker, at each start). FFCV only
ever reads that table from Python (when it generates a decoder's code, and in the writer), where a
plain dict is the same table; so FFCV is imported with numba's Dict standing in as `dict`. No other
FFCV module creates a typed Dict (memory_managers/base.py imports the name and never uses it).

FFCV's OS-cache memory manager also builds Python dicts and sets of every sample's pages, about
600 bytes an image (60 MB per loader at 100,000 images, 0.8 GB at ImageNet-1k's 1.28 million),
which only its process cache and its quasi-random order read. rrdist uses neither, so its
loaders get the same manager without them (`LeanOSCacheManager`).

When a process has built several of FFCV's crop decoders, numba's clean-up of their compiled JPEG
decode fails at exit with a KeyError it prints as "Exception ignored": that report alone is dropped.
"""

from __future__ import annotations

import sys


def load_ffcv() -> None:
    """Import FFCV's fields (and with them FFCV), once per process, the table as a plain dict."""
    if "ffcv.fields.rgb_image" in sys.modules:
        return
    import numba.typed

    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        import ffcv.fields.rgb_image  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict
    _quiet_numba_finalizer()
    _lean_os_cache()


def _lean_os_cache() -> None:
    import ffcv.loader.loader
    import numpy as np
    from ffcv.memory_managers.os_cache import OSCacheContext, OSCacheManager

    class LeanOSCacheManager(OSCacheManager):
        """FFCV's OSCacheManager with only what it reads: the allocations' addresses and sizes."""

        def __init__(self, reader) -> None:  # MemoryManager.__init__ without its per-sample dicts
            self.reader = reader
            order = np.argsort(reader.alloc_table["ptr"])
            self.ptrs = reader.alloc_table["ptr"][order]
            self.sizes = reader.alloc_table["size"][order]
            self.ptr_to_size, self.sample_to_pages, self.page_to_samples = {}, {}, {}
            self.context = OSCacheContext(self)

    ffcv.loader.loader.OSCacheManager = LeanOSCacheManager


def _quiet_numba_finalizer() -> None:
    previous = sys.unraisablehook

    def hook(report) -> None:
        tb = report.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code if tb is not None else None
        if (isinstance(report.exc_value, KeyError) and code is not None and code.co_name == "finalizer"
                and code.co_filename.endswith("numba/core/dispatcher.py")):
            return
        previous(report)

    sys.unraisablehook = hook


def dataset_writer():
    """FFCV's DatasetWriter, its progress bar shown on a terminal only (not in logs or captured output)."""
    import functools

    import ffcv.writer
    from tqdm import tqdm

    ffcv.writer.tqdm = functools.partial(tqdm, disable=not sys.stderr.isatty())
    return ffcv.writer.DatasetWriter
