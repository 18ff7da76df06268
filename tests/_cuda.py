"""CUDA helpers shared by the GPU tests and ``benchmarks/gpu.py``."""

from __future__ import annotations

import threading


def allocated() -> int:
    """Bytes held by torch's CUDA allocator on device 0, after pending work."""
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated(0))


def warm_cublas() -> None:
    """Make cuBLAS allocate its workspaces now, for this thread and for a worker thread.

    cuBLAS keeps a workspace per handle in torch's allocator for the life of the
    process (handles are pooled across threads), so ``memory_allocated`` grows
    with the first matrix product of each kind. Baselines are taken after that;
    generation runs in a worker thread, hence the second round there.
    """
    import torch

    def products() -> None:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            a = torch.ones(64, 64, device="cuda:0", dtype=dtype)
            torch.nn.functional.linear(a, a, a[0]).sum().item()

    products()
    worker = threading.Thread(target=products)
    worker.start()
    worker.join()
