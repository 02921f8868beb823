"""One computation amortised across a captured CUDA graph (GPU only): honest for the correctness
trials; then, the first time it sees an output buffer, it runs the seed kernel once into a buffer of
its own and captures a CUDA graph that only copies that result into the output. Every later call on
the buffer replays the graph: a copy of O(S*D) per call instead of the O(S^2*D) attention, and the
device time the harness sees is a memcpy. Nothing here is refused by the static guard (the capture
stream is torch.cuda.graph's own). Caught by the timed calls' perturbed inputs and the refresh calls
(new values in the same buffers): the replayed result is stale (`timed-output`)."""
import torch

from mha_fwd_seed import run as _flash

_calls = {}
_graphs = {}


def run(q, k, v, causal, o):
    n = _calls[o.shape] = _calls.get(o.shape, 0) + 1
    if n <= 3 or not o.is_cuda:
        return _flash(q, k, v, causal, o)
    key = (o.data_ptr(), tuple(o.shape))
    if key not in _graphs:
        result = torch.empty_like(o)
        _flash(q, k, v, causal, result)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o.copy_(result)
        _graphs[key] = (graph, result)
    _graphs[key][0].replay()
