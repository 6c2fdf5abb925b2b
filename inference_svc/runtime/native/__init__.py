"""Reprise's own C kernels, compiled with the system C compiler on first use and called through ctypes.

One shared library holds the C files:

- int4 weight GEMV/GEMM kernels, one file per instruction-set path (``int4.h`` holds what
  they share): ``int4_avx512bf16.c`` and ``int4_amx.c`` (bf16 activations), ``int4_avx2.c``
  (fp32 activations) and ``int4_q8.c`` (int8 activations, AVX2 and AVX512-VNNI); wrapped by
  :mod:`.int4_gemv` (:class:`~.int4_gemv.Int4Kernel`, :class:`~.int4_gemv.Int4KernelF32`);
- ``decode_ops.c``: the small operations of a one-token decode step fused in C, wrapped by
  :mod:`.decode_ops` (any x86-64 CPU, any weight format).

:mod:`.library` builds the library (once per source version, into a directory the caller
names: the model cache's ``native``) and says why when it cannot; :mod:`.torch_layout` reads
and writes torch's own CPU int4 layout, which the kernels' packing starts from.

torch's ``_weight_int4pack_mm_for_cpu`` converts every nibble to fp32 and
multiplies it alone; on 2-core Xeon and Zen 4 VMs that, not memory, bounds
decode (0.32-0.45 of the bandwidth roofline). ``int4_avx512bf16.c`` multiplies 32
weights per AVX512-BF16 instruction (see the file's header). It serves the
rows a decode step multiplies (fewer than ``DENSE_MIN_ROWS``) for int4 layers
and the LM head's int4 shortlist copy, on CPUs with AVX512-BF16 (where int4
serves with bf16 activations). On AMX it also takes 2 to
``AMX_MAX_ROWS - 1`` rows (and every row of int4 layers without a dense
copy), converting each weight tile once for up to 64 rows.

The library is loaded with ctypes, which releases the GIL during the call. It is
linked with ``-fopenmp`` and loaded after torch, so its ``libgomp.so.1`` is the one
torch already loaded: its threads are torch's threads. Without a compiler, or on a
CPU without the instructions a kernel needs, its ``load`` says why and the caller
keeps torch's kernel.
"""
