"""DetCon's loss keeps its memory near one chunk of logits: forward + backward at
B = 64 local images, M = 16 masks, N = 1024 gathered images (D = 256) raises the
peak RSS of a fresh process by at most 4x one float32 (B, M, N, M) tensor, where
the official layout (tests/detcon_reference.py) takes about 12x."""
import os
import subprocess
import sys

import pytest

B, M, N, D = 64, 16, 1024, 256
UNIT_BYTES = B * M * N * M * 4  # one float32 (B, M, N, M) tensor: 64 MiB

PROBE = r"""
import resource, sys
import torch
import soco_d2
from soco_d2.modeling.losses import detcon_loss_terms
from detcon_reference import reference_detcon_loss_terms

form, variant, B, M, N, D = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
terms = detcon_loss_terms if form == "lean" else reference_detcon_loss_terms
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
p1, p2 = [torch.randn(B, M, D, generator=g).requires_grad_() for _ in range(2)]
others = [torch.randn(N - B, M, D, generator=g) for _ in range(2)]
if variant == "S":  # the queries are this process's rows of the keys, with gradient
    t1, t2 = torch.cat([p1, others[0]]), torch.cat([p2, others[1]])
else:  # DetCon-B: targets from the no-grad target network
    t1, t2 = torch.cat([p1.detach(), others[0]]), torch.cat([p2.detach(), others[1]])
ids1, ids2 = [torch.randint(0, 8, (B, M), generator=g) for _ in range(2)]
sum(terms(p1[:2], p2[:2], t1[:4], t2[:4], ids1[:2], ids2[:2])).backward()  # load every kernel once
p1.grad = p2.grad = None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sum(terms(p1, p2, t1, t2, ids1, ids2)).backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert p1.grad is not None and torch.isfinite(p1.grad).all()
print((after - before) * 1024)
"""


def peak_rss_increase(form: str, variant: str) -> float:
    """Peak-RSS increase of one forward + backward, in units of one fp32 (B, M, N, M) tensor.

    A fresh process per measurement (ru_maxrss only grows); glibc is told to return
    every freed block >= 64 KiB to the OS at once, so the peak RSS follows the
    peak of live tensors instead of what malloc keeps cached."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, form, variant, str(B), str(M), str(N), str(D)],
        cwd=os.path.dirname(os.path.abspath(__file__)), env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1]) / UNIT_BYTES


@pytest.mark.parametrize("variant", ["B", "S"])
def test_detcon_loss_peak_memory_is_at_most_four_logit_tensors(variant):
    lean = peak_rss_increase("lean", variant)
    print(f"DetCon-{variant} loss forward + backward, B={B} M={M} N={N} D={D}: +{lean:.2f} x (B, M, N, M) fp32")
    assert lean <= 4.0


@pytest.mark.slow
def test_the_official_layout_measured_the_same_way_takes_about_twelve():
    # the measurement sees the difference: the full-logits layout stays far above the bound
    official = peak_rss_increase("official", "B")
    print(f"official layout: +{official:.2f} x (B, M, N, M) fp32")
    assert official > 8.0
