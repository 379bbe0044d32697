// A reader of what Python's torch.save(model.state_dict()) writes, without Python and
// without LibTorch (its 1.13 unpickler turns collections.OrderedDict into None, and has no
// reader for the pre-1.6 "legacy" files such as torchvision's vgg16-397923af.pth).
//
// Pickle is a program: Python's unpickler calls whatever global a file names. This one is
// a small pickle machine that knows only the opcodes torch.save emits for a state dict and
// an allow-list of globals (collections.OrderedDict, torch._utils._rebuild_tensor{,_v2},
// torch._utils._rebuild_parameter, torch.<Type>Storage, torch.Size and the type tag
// LibTorch's pickle_save adds); any other global is refused by name. It only describes the tensors (dtype, storage, offset, sizes, strides), each view
// checked against its storage's size; torch_util.cpp reads the storage bytes and makes the
// tensors. Every error is a std::runtime_error naming the byte offset it was found at.
//
// Torch-free on purpose: no <torch/torch.h> (a minute of compile time per file), and a
// fuzzer can link it alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace pipeline::torchpk {

// The storage types torch.save names (torch.FloatStorage, ...), little-endian on disk.
enum class DType { Float32, Float64, Float16, BFloat16, Int64, Int32, Int16, Int8, UInt8, Bool };
int64_t element_size(DType t);
const char* dtype_name(DType t);  // "float32", ...

struct StorageInfo {
  DType dtype = DType::Float32;
  int64_t numel = 0;  // elements the file says the storage holds
};

// One tensor of the dict: elements offset + sum(i_k * strides[k]) of storage `storage`.
struct TensorInfo {
  std::string name;
  std::string storage;  // the storage key: data/<key> in a zip archive
  DType dtype = DType::Float32;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
};

struct StateDict {
  std::vector<TensorInfo> tensors;              // in the file's order, names unique
  std::map<std::string, StorageInfo> storages;  // every storage a tensor uses
};

// The pickle of a state dict (a dict or OrderedDict of name -> tensor; entries of any other
// kind are skipped) -> its tensors. `where` prefixes byte offsets in messages ("data.pkl").
StateDict parse_state_dict(std::string_view pickle, const std::string& where);

// ---- the legacy format (torch.save before 1.6, or _use_new_zipfile_serialization=False):
// pickles of a magic number, a protocol version, sys_info and the object, a pickled list of
// storage keys, then each of those storages as an int64 element count and its raw bytes.
// Whether `head` (a file's first bytes, or all of a short file) starts as the magic number's
// pickle does: true for a legacy file cut short in it, so that it is reported as truncated.
bool is_legacy(std::string_view head);

struct Legacy {
  StateDict dict;
  // storage key -> byte offset of its data in the file (its byte size is numel * element size)
  std::map<std::string, size_t> data;
};
Legacy parse_legacy(std::string_view file);

}  // namespace pipeline::torchpk
