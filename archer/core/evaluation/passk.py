"""pass@k and avg@k from per-problem sample counts.

With n samples of a problem of which c are correct, the unbiased estimator of pass@k (Chen et al.
2021, "Evaluating Large Language Models Trained on Code") is

    pass@k = 1 - C(n-c, k) / C(n, k)

which is the probability that a k-subset drawn without replacement from the n samples holds at
least one correct one. Binomials of n=64 or more overflow floats and lose precision as ratios of
huge integers, so it is computed as the product form

    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)

whose factors all lie in [0, 1). avg@n (mean accuracy over the n samples) equals pass@1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from archer.errors import UsageError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct out of `n` samples (needs 1 <= k <= n)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems given as (n, c) pairs; NaN when there are none."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    return math.fsum(values) / len(values) if values else math.nan


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the columns people compare (pass@1 = avg@n)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def parse_ks(text: str | None, n: int) -> list[int]:
    """The k values of `--k 1,4,16` (sorted, unique), each checked against n; default_ks when empty."""
    if text is None or not str(text).strip():
        return default_ks(n)
    ks: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            raise UsageError(f"--k expects integers such as 1,4,16; got {part!r}") from None
        if k < 1:
            raise UsageError(f"--k values must be >= 1; got {k}")
        if k > n:
            raise UsageError(
                f"pass@{k} needs at least {k} samples per problem, but --n is {n}",
                hint=f"raise --n to {k} or more, or drop {k} from --k",
            )
        ks.append(k)
    if not ks:
        raise UsageError("--k is empty", hint="for example --k 1,4,16")
    return sorted(set(ks))
