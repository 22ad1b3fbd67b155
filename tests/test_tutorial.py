"""docs/tutorial.py, the learner's first stop, runs end to end on tiny settings and draws every picture
it shows. A plain script in a subprocess (jupytext's percent format is Python), so the suite needs no
Jupyter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "tutorial.py"
MNIST = [REPO / ".." / "shared" / "data" / "mnist"] + (
    [Path(os.environ["MINIDIFF_DATA"]) / "mnist"] if os.environ.get("MINIDIFF_DATA") else [])
PICTURES = ["digit", "forward", "alphas_cumprod", "loss", "denoise", "samples", "trajectory", "ddim"]


@pytest.mark.skipif(not any(d.is_dir() for d in MNIST), reason=f"MNIST t10k not found in {MNIST}")
def test_the_tutorial_runs_and_draws_its_pictures(tmp_path):
    env = {**os.environ, "MINIDIFF_TUTORIAL_TINY": "1", "MINIDIFF_TUTORIAL_OUT": str(tmp_path)}
    result = subprocess.run([sys.executable, str(TUTORIAL)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps, one model call each" in result.stdout
    for name in PICTURES:
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.size[0] > 50 and picture.size[1] > 50, name
    # the markdown shows exactly the pictures the script writes, and the committed ones are there
    source = TUTORIAL.read_text(encoding="utf-8")
    shown = re.findall(r"\]\(tutorial/(\w+)\.png\)", source)
    assert sorted(shown) == sorted(PICTURES)
    for name in PICTURES:
        assert (REPO / "docs" / "tutorial" / f"{name}.png").is_file(), name
