"""``python -m kdlab ...``: the command line (`kdlab.cli`), also as ``torchrun --nproc_per_node=N -m kdlab train ...``.

Under torchrun only rank 0 prints results (its tqdm bars are the only ones shown, see
`kdlab.engine.train_cohort`) and kdlab's one-line errors (`kdlab.cli.main`); tracebacks come from
every rank.
"""

import os
import sys

from kdlab.cli import launched_rank, main

if __name__ == "__main__":
    if launched_rank() > 0:
        sys.stdout = open(os.devnull, "w")
    sys.exit(main())
