"""Entry point of ``python -m xattnres_monai.data.phantoms`` (write synthetic CT phantoms).

The program is :mod:`xattnres_monai.cli.phantoms`, the logic :mod:`xattnres_monai.testing.phantoms`.
"""

from xattnres_monai.cli.phantoms import main

if __name__ == "__main__":
    main()
