"""llmlab: a config-driven laboratory for training and studying small decoder-only language models."""

import os
import sys

# torch's OpenMP threads wait for work by sleeping, not spinning: spinning threads burn the cores that other
# processes on a shared machine need, and a default run there was 5 times slower than with one thread
# (python -m llmlab.bench threads). OpenMP reads this once, when torch loads it (setting it later changes
# nothing, measured), so it is set here, before any llmlab module imports torch; a value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    OMP_PASSIVE = os.environ["OMP_WAIT_POLICY"].strip().upper() == "PASSIVE"
else:  # torch was imported first: its OpenMP took whatever the environment said then, unknown here
    OMP_PASSIVE = False

from llmlab import console  # noqa: E402, F401  its handler: where library code's log lines go
