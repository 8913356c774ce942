"""Entry point of ``python -m xattnres_monai.data.prepare`` (prepare a labelled CT / MR collection).

The program is :mod:`xattnres_monai.cli.prepare`, the logic :mod:`xattnres_monai.data.collection`.
"""

from xattnres_monai.cli.prepare import main

if __name__ == "__main__":
    main()
