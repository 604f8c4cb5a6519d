"""Settings for ``pytest --nbval notebooks/``: the kernels nbval starts inherit them, so a
check run sees what scripts/regenerate_notebooks.py stored (one thread, no progress bars,
no hub access)."""
import os

os.environ.update({"PATCHLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1"})
