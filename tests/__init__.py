from common.threads import limit_blas_threads

limit_blas_threads()  # before numpy: the in-process models too, and the xdist workers inherit it
