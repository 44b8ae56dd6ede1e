"""C: the controller, rollouts, CMA-ES over MPI, training and evaluation (stages 5-7).

Rollout processes run numpy only and step one episode at a time, where a second BLAS thread
only adds synchronisation (it made V's twin 1.8x slower on 2 cores) and 64 MPI ranks would
oversubscribe a machine many times over. Importing the package therefore asks for single-threaded
BLAS before numpy loads, as the original's `mpi_fork` did (MKL_NUM_THREADS=1, OMP_NUM_THREADS=1);
each can be overridden from the environment.
"""

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
