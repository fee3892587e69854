# GEMV cost of the 130m shape's projections (batch 1, fp32) inside a CUDA graph, and a tiny dependent
# kernel for the per-launch floor: what an optimizer step on the GPU cannot go below.
# Usage (on the GPU machine): python3 tools/bench_gemv.py
import torch, time
torch.manual_seed(0)
d = 'cuda'
def graph_time(fn, reps=200):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps): fn()
    g.replay(); torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10): g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 10 / reps * 1e6
x1 = torch.zeros(1, device=d)
print('tiny add_ in graph: %.2f us' % graph_time(lambda: x1.add_(1)))
for (k, n) in [(768, 3352), (1536, 768), (768, 50288), (3352, 768), (768, 1536), (50288, 768)]:
    a = torch.randn(1, 1, k, device=d); w = torch.randn(n, k, device=d)
    t = graph_time(lambda: torch.nn.functional.linear(a, w))
    print('linear [1,%d] x [%d,%d]^T fp32: %.2f us  (%.0f GB/s)' % (k, n, k, t, n * k * 4 / t / 1e3))
    wt = w.t().contiguous()
    t2 = graph_time(lambda: torch.mv(wt.t(), a.view(-1)))
    print('   mv same: %.2f us' % t2)
