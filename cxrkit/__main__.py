"""``python -m cxrkit ...``: see :mod:`cxrkit.cli`."""

from cxrkit.cli import main

raise SystemExit(main())
