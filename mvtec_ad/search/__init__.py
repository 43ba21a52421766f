"""Nearest-neighbour search of memory banks (knn, patchcore): which backend runs where.

    exact_fp32  nearest.py: one float32 GEMM per cache-sized chunk of queries, on the bank's device;
                what ONNX export traces, and the reference every other backend is tested against
    exact_bf16  bf16.py: the bank ranked in bf16, the best candidates re-ranked in float32; by the
                fused kernel (native.py, kernels/) on CPUs with AVX-512 BF16 and no AMX (AMD Zen 4/5),
                else by torch's bf16 GEMM (AMX CPUs, CUDA GPUs from Ampere on)
    ivf         ivf.py, lists.py: our own inverted file, k-means lists scanned with the queries grouped
                by list: by the fused kernel on AVX-512 BF16 CPUs, by float32 GEMMs (torch) elsewhere
    faiss       faiss_index.py: a faiss index (Flat, IVF, HNSW) on the CPU, any x86-64 (AVX2 or
                AVX-512) or ARM64 machine; auto's approximate search on ARM64
    auto        bank.py picks by device, bank size and cpu.py's view of the CPU (see BankSearch.backend)

cpu.py says what the CPU does in hardware and lets MVTEC_AD_CPU=avx2 hide the rest. This package
never imports torch at import time (mvtec_ad/__init__.py loads cpu.py before torch).
"""
