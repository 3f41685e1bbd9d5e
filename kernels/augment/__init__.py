"""Batched augmentation: gather + reflect-pad crop + flip + cutout + normalise + cast.

Everything between the uint8 data set held on the device and the network's input, in one
op. Random choices are drawn by the caller as per-image parameter tensors
(:func:`random_augment_params`), so the op itself is deterministic and every image gets its
own crop, flip and cutout (the seed's code shared one choice among up to 200 groups).

Coordinates, exactly:
  * the source image is ``data[indices[b]]``, reflect-padded by ``pad`` pixels on each side
    (as ``F.pad(mode="reflect")``);
  * output pixel ``(i, j)`` before flipping reads padded pixel ``(crop[b,0] + i, crop[b,1] + j)``;
    with ``flip[b]`` the output row is mirrored: ``out[..., i, j] = unflipped[..., i, W-1-j]``;
  * cutout zeroes output pixels ``cutout[b,0] <= i < cutout[b,0]+cutout_size`` and
    ``cutout[b,1] <= j < cutout[b,1]+cutout_size`` (output coordinates, after flipping), after
    normalisation, on every channel;
  * ``out = (x - mean[c]) / std[c]`` on the 0–255 scale, cast to ``out_dtype``, returned
    channels_last (memory order B, H, W, C).

Where each job lives: ``reference.py`` the parameters' draw, the plain-PyTorch op and the
input checks; ``triton_kernels.py`` the kernel; ``launch.py`` its tile, grid and launch;
``op.py`` :func:`augment` itself, its backends and the ``torch.library`` op; ``specs.py``
the byte model and the ahead-of-time specs.

Design (a memory-bound op, so it is judged by bytes moved and by how wide the stores are)
-----------------------------------------------------------------------------------------
* One program per (image, block of rows); at CIFAR size (32×32×3) a program is one whole
  image, so the grid is just B programs. The output tile is 2-D: [BLOCK_ROWS, BLOCK_WC],
  rows of the image × the flattened (W, C) run of one output row. In channels_last memory
  an output row *is* a contiguous run of W·C elements (96 at CIFAR size), so every thread
  holds 8 consecutive elements of one row and writes them with one 16-byte store (fp16/bf16)
  or two (fp32). BLOCK_WC is the next power of two (128 for 96): a quarter of the lanes are
  masked off, which costs issue slots but no memory traffic (at CIFAR size W·C = 96 is a
  multiple of 8, so the mask is constant over each 8-element vector and the stores stay
  16 bytes wide: STG.E.128 in the SASS, see :func:`aot_specs`).
* The source (c, h, w) of an output element splits into a per-column part (channel c =
  col % C, output column j = col // C → flip → crop → reflect → c·H·W + w) and a per-row
  part (output row i → crop → reflect → h·W). Each is computed once on a 1-D vector and
  broadcast, so per element only "row part + column part", the gather, normalise, cutout
  select and cast remain; the integer divisions by C are by a constexpr (mul-shift).
* Reflect padding is index arithmetic on those vectors (-k → k, n-1+k → n-1-k; pad < n
  is checked, so one reflection suffices); the padded image never exists anywhere.
* The uint8 source reads are byte gathers: 3 KB per image, touched once from DRAM and then
  served by L1/L2 (a warp covers two output rows: six 32-byte source row segments).
* Normalisation must equal ``(x - mean) / std`` bit for bit (PyTorch divides with IEEE
  rounding on CPU and CUDA). A plain multiply by r = 1/std is off by one ulp for about a
  quarter of the values; ``tl.div_rn`` is exact but costs ~10 instructions per element
  (MUFU.RCP + Newton steps + FCHK + a slow-path branch), about 40% of the kernel's issue
  slots. Instead: q0 = a·r, rem = fma(-q0, std, a) (exact), q = fma(rem, r, q0), with
  r = RN(1/std) computed once on the host — Markstein's correction, which yields the
  correctly rounded quotient when r is the correctly rounded reciprocal and q0 is within an
  ulp (no over/underflow here: |a| <= 255 and std is a normal positive number). Checked
  exhaustively over x in 0..255 for 800k random (mean, std) pairs (0 mismatches; the plain
  multiply had 26%) and on 10M random fp32 pairs. 3 FP instructions per element.
* The per-image parameters (index, crop, flip, cutout) are 6 scalar loads per program, in
  whatever integer type the caller has (int64 from torch.randint/randperm): converting them
  to int32 on the host side would cost three extra kernel launches per batch, far more than
  the 41 bytes per image they are.

Bytes per batch of B images (E = B·C·H·W elements): read E uint8 + B·(8+16+1+16) parameter
bytes (int64) + 3·C·4 bytes of mean/std/(1/std); write E·sizeof(out_dtype). Nothing else.
:func:`augment_bytes` counts this against the eager sequence of PyTorch ops.
"""

from kernels.augment.op import augment
from kernels.augment.reference import (
    OUT_DTYPES,
    augment_reference,
    check_augment_inputs,
    random_augment_params,
)
from kernels.augment.specs import aot_specs, augment_bytes

__all__ = [
    "OUT_DTYPES",
    "aot_specs",
    "augment",
    "augment_bytes",
    "augment_reference",
    "check_augment_inputs",
    "random_augment_params",
]
