"""``python -m kdlab ...``: the command line (`kdlab.cli`), also as ``torchrun --nproc_per_node=N -m kdlab train ...``.

Under torchrun only rank 0 prints results (its tqdm bars are the only ones shown, see
`kdlab.engine.train_cohort`); every rank still reports errors on stderr.
"""

import os
import sys

from kdlab.cli import main

if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")
    sys.exit(main())
