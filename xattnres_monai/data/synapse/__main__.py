"""Entry point of ``python -m xattnres_monai.data.synapse`` (check Synapse CT data, write its datalist).

The program is :mod:`xattnres_monai.cli.synapse`, the logic :mod:`xattnres_monai.data.synapse`.
"""

from xattnres_monai.cli.synapse import main

if __name__ == "__main__":
    main()
