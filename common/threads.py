"""One BLAS thread per process, set before numpy is first imported.

numpy's OpenBLAS starts a thread per core and lets idle ones spin-wait for the next product.
Our processes multiply small matrices (the mel filterbank of every Whisper decode, resampling)
where a second thread saves no time, while its spinning takes a core that another process on the
box (another worker, another session's decode) needed. Measured on the 2-core machine
(`python -m bench.blas_threads`; figures in the README), the partial decodes of a 3.4 s
question, one every 300 ms, took 1.50 CPU-s with the default and 1.15 CPU-s with one BLAS
thread, and the decodes themselves 0.95 s and 0.86 s of wall time.

Each process package calls `limit_blas_threads()` from its `__init__`, which Python runs before
anything in `python -m <package>` imports numpy. An operator's own setting wins.
"""

from __future__ import annotations

import os

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS",)


def limit_blas_threads() -> None:
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
