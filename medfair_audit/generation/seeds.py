"""Per-image seeds that depend only on (global seed, prompt index, image index).

Because each image's seed is a function of its identity, and not of the batch it lands in or of
the process that draws it, results are the same for any batch size or number of processes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["image_seed"]


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """A 63-bit seed for one image, from NumPy's ``SeedSequence`` hash of the three indices."""
    words = np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(2)
    return int(words[0]) << 31 ^ int(words[1])
