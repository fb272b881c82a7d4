"""Import FFCV without its one needless compile.

ffcv.fields.rgb_image (imported by every FFCV loader and writer) builds its table of image modes,
{"jpg": 0, "raw": 1}, as a numba typed Dict when it is imported, which compiles the typed Dict's
code: 3.7 s in every process that touches FFCV (each training worker, at each start). FFCV only
ever reads that table from Python (when it generates a decoder's code, and in the writer), where a
plain dict is the same table; so FFCV is imported with numba's Dict standing in as `dict`. No other
FFCV module creates a typed Dict (memory_managers/base.py imports the name and never uses it).

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
