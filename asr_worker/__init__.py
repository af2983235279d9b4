from common.threads import limit_blas_threads

limit_blas_threads()  # before anything imports numpy (see common/threads.py)
