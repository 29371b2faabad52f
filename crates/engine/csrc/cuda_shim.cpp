// A C interface to what tch does not expose of libtorch's CUDA side: `at::cuda::CUDAGraph`
// and the caching allocator's memory statistics.
//
// Built by gemma-model's build.rs into a small shared library that the crate embeds and
// `dlopen`s only after `libtorch_cuda.so` is loaded, so the `scope` binary itself never links
// CUDA code and still runs on a CPU-only libtorch. Every entry point catches C++ exceptions
// and reports them through `scope_graph_error`, never across the C boundary.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>

namespace {

struct Graph {
  at::cuda::CUDAGraph graph;
  // The side stream a capture needs (CUDA cannot capture the legacy default stream), current
  // between `scope_graph_enter` and `scope_graph_exit`.
  std::optional<c10::cuda::CUDAStream> stream;
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  std::string error;
};

template <typename F>
int guarded(Graph* g, F&& f) {
  if (g == nullptr) return 1;
  try {
    f(*g);
    g->error.clear();
    return 0;
  } catch (const std::exception& e) {
    g->error = e.what();
  } catch (...) {
    g->error = "unknown C++ exception";
  }
  return 1;
}

// Runs `f`; on a C++ exception writes its message to `why` (`size` bytes, NUL-terminated)
// and returns 1.
template <typename F>
int reporting(char* why, size_t size, F&& f) {
  std::string message;
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
    message = "unknown C++ exception";
  }
  if (why != nullptr && size > 0) {
    size_t n = std::min(size - 1, message.size());
    message.copy(why, n);
    why[n] = '\0';
  }
  return 1;
}

}  // namespace

extern "C" {

// A new graph, or null with the reason in `why` (`size` bytes, NUL-terminated).
void* scope_graph_new(char* why, size_t size) {
  void* graph = nullptr;
  reporting(why, size, [&] { graph = new Graph(); });
  return graph;
}

void scope_graph_free(void* handle) { delete static_cast<Graph*>(handle); }

const char* scope_graph_error(void* handle) {
  return handle == nullptr ? "no graph" : static_cast<Graph*>(handle)->error.c_str();
}

// Makes a side stream of the current device current; work from here on (warm-up, capture)
// runs on it. The default stream's pending work is waited for first.
int scope_graph_enter(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) {
    auto current = c10::cuda::getCurrentCUDAStream();
    auto side = c10::cuda::getStreamFromPool();
    side.synchronize();
    current.synchronize();
    g.stream.emplace(side);
    g.guard.emplace(side);
  });
}

// Waits for the side stream and restores the previous current stream.
int scope_graph_exit(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) {
    if (g.stream) g.stream->synchronize();
    g.guard.reset();
    g.stream.reset();
  });
}

// Thread-local capture mode: other threads of the process may keep using CUDA meanwhile
// (PyTorch's default, global, would make their calls fail during the capture).
int scope_graph_capture_begin(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) {
    g.graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
  });
}

int scope_graph_capture_end(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) { g.graph.capture_end(); });
}

// Launches the recorded work on the current stream.
int scope_graph_replay(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) { g.graph.replay(); });
}

// The caching allocator's byte counts for `device` (torch.cuda.memory_allocated,
// max_memory_allocated, memory_reserved, max_memory_reserved): `out[0..4]`.
int scope_cuda_memory(int device, int64_t* out, char* why, size_t size) {
  return reporting(why, size, [&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
  });
}

// Starts the peaks of `scope_cuda_memory` afresh (torch.cuda.reset_peak_memory_stats).
int scope_cuda_reset_peak_memory(int device, char* why, size_t size) {
  return reporting(why, size, [&] {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}

}  // extern "C"
