"""``python -m oncely``: the same command as ``oncely``.

``python -m`` puts the current directory first on ``sys.path``; it is taken off again, so a stray
``rich.py`` or ``click.py`` there cannot shadow an installed package (``--app`` appends the
current directory, after the installed packages, when it loads your module).
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from oncely.cli import main  # after the sys.path fix, on purpose

main()
