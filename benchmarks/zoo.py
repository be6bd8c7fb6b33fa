"""Run the model-zoo benchmark (``gpuprune bench --zoo``) on a machine whose torchvision wheel
does not match torch: declares torchvision's op schemas first (see zoo_models.py), then runs the
same CLI command.

    PYTHONPATH=src python benchmarks/zoo.py [--quick] [--batches 1,8] [--zoo-models resnet18,...]

Where ``import torchvision`` works, ``gpuprune bench --zoo`` is all you need.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from zoo_models import zoo_missing  # noqa: E402  (applies the torchvision workaround)

from gpuprune.cli.main import main  # noqa: E402

if __name__ == "__main__":
    missing = zoo_missing()
    if missing:
        sys.exit(f"error: {missing}")
    sys.exit(main(["bench", "--zoo", *sys.argv[1:]]))
