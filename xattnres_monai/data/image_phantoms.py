"""Entry point of ``python -m xattnres_monai.data.image_phantoms`` (write a synthetic 2D binary release).

The program is :mod:`xattnres_monai.cli.image_phantoms`, the logic :mod:`xattnres_monai.testing.image_phantoms`.
"""

from xattnres_monai.cli.image_phantoms import main

if __name__ == "__main__":
    main()
