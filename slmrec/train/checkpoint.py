"""Training-side checkpoint state: the RNG streams a resumed run continues (python/numpy stored as plain
types, so last.pt stays loadable with weights_only=True).

Writing, verifying and loading checkpoints and rebuilding models from them lives one layer down, in
slmrec/models/checkpoint.py (evaluation, distillation and serving load models without the training
package); its names are re-exported here for the loop.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from slmrec.models.checkpoint import (  # noqa: F401  (re-exported for the training loop)
    BEST,
    LAST,
    CorruptCheckpointError,
    build_model,
    load_checkpoint,
    load_model,
    model_class_path,
    save_atomic,
    verify_checkpoint_file,
)


# --- random number generator states (python/numpy states are stored as plain types: weights_only) ---


def get_rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
