"""Differentiable ops with PyTorch names and semantics, each a Function with forward and
backward side by side. Grouped by kind; everything is importable from here, with
``no_fusion()``, which runs every op as written (see ``fusion.py``)."""
from .elementwise import *  # noqa: F401,F403
from .activation import *  # noqa: F401,F403
from .reduce import *  # noqa: F401,F403
from .shape import *  # noqa: F401,F403
from .linalg import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .resample import *  # noqa: F401,F403
from .fusion import no_fusion  # noqa: F401
