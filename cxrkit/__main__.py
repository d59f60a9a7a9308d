"""``python -m cxrkit ...``: see :mod:`cxrkit.cli`.

``doctor`` runs before the command line is even imported: it checks environments in
which importing the other commands may fail (see :mod:`cxrkit.doctor`).
"""

import sys

if sys.argv[1:2] == ["doctor"]:
    from cxrkit.doctor import main as doctor_main

    raise SystemExit(doctor_main(sys.argv[2:]))

from cxrkit.cli import main  # noqa: E402 - after the doctor's early exit, on purpose

raise SystemExit(main())
