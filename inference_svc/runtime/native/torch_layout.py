"""torch's own CPU int4 weight layout (``_convert_weight_to_int4pack_for_cpu``), which depends on the CPU.

The kernels' packing (:meth:`.int4_gemv.Int4Kernel.pack`) reads it, and a converted copy
written on one CPU is re-laid out for another (:func:`relayout_torch_int4`).
"""

from __future__ import annotations

import functools

import torch

from inference_svc.runtime.native.library import NativeUnavailable


@functools.cache
def torch_int4_block() -> int:
    """Rows per block of torch's CPU int4 layout here: it depends on the CPU torch's kernel was built for.

    ``_convert_weight_to_int4pack_for_cpu`` writes ``[N/B, K, B/2]`` bytes, row ``j`` of a block in the
    low nibbles and row ``B/2 + j`` in the high ones, with B = 64 on AVX512 CPUs and 32 on AVX2 ones
    (seen on an AMD Zen 3). Found once per process by packing a probe.
    """
    n, k = 128, 64
    q = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1).view(torch.uint8).reshape(n, k // 2)
    for block in (64, 32):
        if torch.equal(torch_int4_layout(q, block), packed):
            return block
    raise NativeUnavailable("torch's int4 weight layout on this CPU is not one Reprise's kernel reads")


def torch_int4_layout(q: torch.Tensor, block: int) -> torch.Tensor:
    """``q`` ([N, K] values 0..15) in torch's CPU int4 layout with ``block`` rows per block, as ``[N, K/2]`` bytes.

    Whole blocks: for each input, byte ``j`` holds row ``j`` (low nibble) and row ``block/2 + j`` (high);
    a last block of ``N % block`` rows (a multiple of 16) pairs neighbouring rows instead (torch's
    ``weight_to_int4pack_kernel``).
    """
    n, k = q.shape
    whole = n - n % block
    t = q[:whole].reshape(whole // block, block, k).permute(0, 2, 1)
    parts = [(t[..., : block // 2] | (t[..., block // 2 :] << 4)).reshape(-1)]
    if whole < n:
        tail = q[whole:].t()  # [K, rows]
        parts.append((tail[:, 0::2] | (tail[:, 1::2] << 4)).reshape(-1))
    return torch.cat(parts).to(torch.uint8).reshape(n, k // 2)


def torch_int4_values(packed: torch.Tensor, block: int) -> torch.Tensor:
    """The ``[N, K]`` values (uint8, 0..15) of ``packed``, written in torch's int4 layout with ``block`` rows per block."""
    n, k = packed.shape[0], packed.shape[1] * 2
    whole = n - n % block
    flat = packed.view(torch.uint8).reshape(-1)
    cut = whole * k // 2
    p = flat[:cut].reshape(whole // block, k, block // 2)
    rows = [torch.cat([p & 0xF, p >> 4], dim=-1).permute(0, 2, 1).reshape(whole, k)]
    if whole < n:
        tail = flat[cut:].reshape(k, (n - whole) // 2)
        rows.append(torch.stack([tail & 0xF, tail >> 4], dim=-1).reshape(k, n - whole).t())
    return torch.cat(rows)


def relayout_torch_int4(packed: torch.Tensor, block: int) -> torch.Tensor:
    """``packed``, written where torch's int4 block was ``block`` (another CPU), in this CPU's layout.

    A converted copy made on an AVX2 machine holds 32-row blocks; torch on an AVX-512 one reads 64-row
    blocks, and would multiply the wrong nibbles without a word (an image is built on one machine and
    run on others). Done in bytes, with :func:`torch_int4_layout` (which the tests hold to torch's own
    packing): 1.5 s for the default model's 247 MB on a Zen 3, against 6 s through torch's int32 packer.
    """
    here = torch_int4_block()
    return packed if block == here else torch_int4_layout(torch_int4_values(packed, block), here)
