"""Entry point of ``python -m xattnres_monai.data.images`` (check a 2D binary release, write its datalist).

The program is :mod:`xattnres_monai.cli.images`, the logic :mod:`xattnres_monai.data.images`.
"""

from xattnres_monai.cli.images import main

if __name__ == "__main__":
    main()
