// fuzz_torch_pickle's entry point (targets.h): hostile bytes through the state-dict reader
// (stages/torch_pickle.h). Its own file, so that fuzz_torch_pickle links only that reader.
#include <cstdlib>
#include <stdexcept>
#include <string_view>

#include "targets.h"
#include "torch_pickle.h"

namespace pipeline::fuzz {

namespace {

// What the reader promises torch_util.cpp, checked in wider arithmetic: every element a
// tensor's view reaches lies in its storage, and a legacy storage's bytes lie in the file.
void check_views(const torchpk::StateDict& d) {
  for (const torchpk::TensorInfo& t : d.tensors) {
    const torchpk::StorageInfo& s = d.storages.at(t.storage);
    if (t.sizes.size() != t.strides.size() || t.offset < 0 || s.numel < 0) std::abort();
    __int128 last = t.offset;
    bool empty = false;
    for (size_t k = 0; k < t.sizes.size(); ++k) {
      if (t.sizes[k] < 0 || t.strides[k] < 0) std::abort();
      empty = empty || t.sizes[k] == 0;
      if (t.sizes[k] > 0) last += static_cast<__int128>(t.sizes[k] - 1) * t.strides[k];
    }
    if (empty ? t.offset > s.numel : last >= s.numel) std::abort();
  }
}

}  // namespace

bool torch_pickle_one(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    if (!torchpk::is_legacy(bytes)) {
      check_views(torchpk::parse_state_dict(bytes, "data.pkl"));
      return true;
    }
    const torchpk::Legacy legacy = torchpk::parse_legacy(bytes);
    check_views(legacy.dict);
    for (const auto& [key, info] : legacy.dict.storages) {
      const auto at = static_cast<__int128>(legacy.data.at(key));
      if (at + static_cast<__int128>(info.numel) * torchpk::element_size(info.dtype) > static_cast<__int128>(size))
        std::abort();
    }
    return true;
  } catch (const std::runtime_error&) {
    return false;  // a refusal, the expected outcome for most inputs
  }
}

}  // namespace pipeline::fuzz
