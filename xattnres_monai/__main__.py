"""Entry point of ``python -m xattnres_monai <command>`` (console script ``xattnres-monai``): ``predict``, ``demo``.

The program is :mod:`xattnres_monai.cli.main`.
"""

from xattnres_monai.cli.main import main

if __name__ == "__main__":
    main()
