// The torch binding: the entry `run` (destination-passing: inputs, then the output to write),
// exposed to Python by PYBIND11_MODULE as SOL-ExecBench's cuda_cpp examples do.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

void vector_add_launch(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream);

void run(torch::Tensor a, torch::Tensor b, torch::Tensor out) {
    TORCH_CHECK(a.is_cuda() && b.is_cuda() && out.is_cuda(), "a, b and out must be CUDA tensors");
    TORCH_CHECK(a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32 &&
                out.scalar_type() == torch::kFloat32, "a, b and out must be float32");
    TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && out.is_contiguous(), "tensors must be contiguous");
    TORCH_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "sizes differ");
    vector_add_launch(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), a.numel(),
                      c10::cuda::getCurrentCUDAStream().stream());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("run", &run, "out = a + b (CUDA)");
}
