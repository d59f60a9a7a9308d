"""Settings for the whole test run, notebooks included.

nbval starts each notebook's kernel from this process, so the kernel inherits
these variables: progress bars are silenced (their output is never the same
twice), exactly as when the notebooks were executed for committing
(``scripts/run_notebooks.py`` sets the same).
"""

import os

os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")
