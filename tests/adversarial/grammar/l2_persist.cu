// L2 persistence (CUDA C++, GPU only): keeps its inputs hot across the harness's L2 flush. On its
// first call it raises the persisting-L2 set-aside to the device's maximum
// (cudaLimitPersistingL2CacheSize); every call puts an access-policy window over the logits on the
// stream it launches on (hitProp persisting), so those lines live in the set-aside,
// where the flush's normal writes cannot evict them, and the next call on the same set starts warm.
// The mask itself is computed honestly. The static guard has nothing to refuse in C++ (no forbidden
// call). Caught by the timing loop's persisting-L2 check (`l2-persist`): the set-aside raised above
// what it was before the candidate loaded, found after the first checked call.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

__global__ void mask_rows(float* logits, const int32_t* bitmask, const int32_t* indices, int64_t vocab,
                          int64_t logits_stride, int64_t bitmask_stride) {
    int64_t row = indices[blockIdx.y];
    int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= vocab) return;
    int32_t word = bitmask[row * bitmask_stride + t / 32];
    if (((word >> (t % 32)) & 1) == 0) logits[row * logits_stride + t] = -INFINITY;
}

static bool raised = false;

void run(torch::Tensor logits, torch::Tensor bitmask, torch::Tensor indices) {
    TORCH_CHECK(logits.is_cuda() && logits.scalar_type() == torch::kFloat32, "float32 CUDA logits expected");
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int device = logits.get_device();
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, device);
    if (!raised) {
        cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, prop.persistingL2CacheMaxSize);
        raised = true;
    }
    cudaStreamAttrValue attr = {};
    attr.accessPolicyWindow.base_ptr = logits.data_ptr();
    attr.accessPolicyWindow.num_bytes = std::min<size_t>(logits.numel() * sizeof(float),
                                                        static_cast<size_t>(prop.accessPolicyMaxWindowSize));
    attr.accessPolicyWindow.hitRatio = 1.0f;
    attr.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
    attr.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
    cudaStreamSetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &attr);
    int64_t rows = indices.size(0), vocab = logits.size(1);
    if (rows > 0) {
        dim3 grid(static_cast<unsigned>((vocab + 255) / 256), static_cast<unsigned>(rows));
        mask_rows<<<grid, 256, 0, stream>>>(logits.data_ptr<float>(), bitmask.data_ptr<int32_t>(),
                                            indices.data_ptr<int32_t>(), vocab, logits.stride(0), bitmask.stride(0));
    }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("run", &run, "grammar bitmask, inputs kept persisting in L2");
}
