// A C interface to libtorch's `at::cuda::CUDAGraph`, which tch does not expose.
//
// Built by gemma-model's build.rs into a small shared library that the crate embeds and
// `dlopen`s only after `libtorch_cuda.so` is loaded, so the `scope` binary itself never links
// CUDA code and still runs on a CPU-only libtorch. Every entry point catches C++ exceptions
// and reports them through `scope_graph_error`, never across the C boundary.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstddef>
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

}  // namespace

extern "C" {

// A new graph, or null with the reason in `why` (`size` bytes, NUL-terminated).
void* scope_graph_new(char* why, size_t size) {
  std::string message;
  try {
    return new Graph();
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
  return nullptr;
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

int scope_graph_capture_begin(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) { g.graph.capture_begin(); });
}

int scope_graph_capture_end(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) { g.graph.capture_end(); });
}

// Launches the recorded work on the current stream.
int scope_graph_replay(void* handle) {
  return guarded(static_cast<Graph*>(handle), [](Graph& g) { g.graph.replay(); });
}

}  // extern "C"
