// The plugin entry point. A plugin is a shared library that exports exactly one C function,
// `pipe_plugin_entry`, returning a descriptor. The loader checks the descriptor before it
// calls anything else in the library and refuses a mismatch with a message naming both sides.
//
//   static void register_stages(pipeline::Registry& r) { r.add<MyStage>(schema); }  // pipe/schema.h
//   PIPE_PLUGIN("my_stages", "1.0.0", register_stages)
#pragma once

#include <cstdint>

#include <oneapi/tbb/version.h>
#include <opencv2/core/version.hpp>
#include <torch/csrc/api/include/torch/version.h>

#include "pipe/registry.h"

// Bump on any change to the descriptor layout or to how it is interpreted.
#define PIPE_PLUGIN_ABI_VERSION 1u
// API: a plugin built against MAJOR.MINOR loads into a host with the same MAJOR and a
// MINOR at least as new (GStreamer's rule).
#define PIPE_API_MAJOR 0u
#define PIPE_API_MINOR 3u

#define PIPE_STR_(x) #x
#define PIPE_STR(x) PIPE_STR_(x)
// Everything that must agree for C++ objects (std::string, cv::Mat, torch tensors) to
// cross the boundary safely.
#define PIPE_BUILD_FINGERPRINT                                                         \
  "gcc-" PIPE_STR(__GNUC__) ";cxx11abi=" PIPE_STR(_GLIBCXX_USE_CXX11_ABI)              \
  ";torch=" PIPE_STR(TORCH_VERSION_MAJOR) "." PIPE_STR(TORCH_VERSION_MINOR)            \
  ";opencv=" CV_VERSION ";tbb=" PIPE_STR(TBB_VERSION_MAJOR) "." PIPE_STR(TBB_VERSION_MINOR)

extern "C" {
struct pipe_plugin_descriptor {
  uint32_t struct_size;  // sizeof(pipe_plugin_descriptor) as the plugin saw it
  uint32_t abi_version;
  uint32_t api_major;
  uint32_t api_minor;
  const char* name;
  const char* version;
  const char* build_fingerprint;
  void (*register_stages)(pipeline::Registry& registry);
};
typedef const pipe_plugin_descriptor* (*pipe_plugin_entry_fn)();
}

#define PIPE_PLUGIN(NAME, VERSION, REGISTER_FN)                                          \
  extern "C" __attribute__((visibility("default"))) const pipe_plugin_descriptor*        \
  pipe_plugin_entry() {                                                                  \
    static const pipe_plugin_descriptor d = {                                            \
        sizeof(pipe_plugin_descriptor), PIPE_PLUGIN_ABI_VERSION, PIPE_API_MAJOR,         \
        PIPE_API_MINOR, NAME, VERSION, PIPE_BUILD_FINGERPRINT, REGISTER_FN};             \
    return &d;                                                                           \
  }
