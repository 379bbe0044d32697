// Writes the cache fuzzer's seeds (tests/fuzz/corpus/cache/): entries made by the real
// FeatureCache::Writer, in fuzz_cache's input format (manifest, then the .npy file; see
// cache_one in targets.h), most with the checksum and byte-count slots instead of the values,
// and refused ones: the previous format_version, truncations. The outputs are committed;
// rerun only to change them (a new manifest format):
//   cmake --build build-fuzz --target make_cache_seeds && build-fuzz/make_cache_seeds tests/fuzz/corpus/cache
// test_fuzz_regressions checks that the valid-* seeds open as entries and the others do not.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

#include "cache_store.h"
#include "targets.h"

namespace fs = std::filesystem;
using namespace pipeline;
using namespace pipeline::fuzz;

namespace {

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

void replace(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  if (at == std::string::npos) {
    std::fprintf(stderr, "make_cache_seeds: no '%s' in the manifest\n", from.c_str());
    std::exit(1);
  }
  s.replace(at, from.size(), to);
}

struct Seed {
  std::string manifest, npy;
};

// One entry: `count` samples x `views`, features of `shape`, the ids in `skip` skipped.
Seed make(const std::string& root, int64_t count, int views, std::vector<int64_t> shape,
          std::vector<int64_t> skip) {
  FeatureCache cache(root);
  cache.remove_all();
  FeatureCache::Writer w = cache.begin(kCacheFingerprint, kCacheSplit, count, views, "fuzz seed");
  for (int64_t id = 0; id < count; ++id) {
    if (std::find(skip.begin(), skip.end(), id) != skip.end()) {
      w.skip(id, "unreadable #" + std::to_string(id));
      continue;
    }
    for (int v = 0; v < views; ++v) {
      float* p = nullptr;
      Tensor t = Tensor::zeros(shape, &p);
      for (int64_t k = 0; k < t.numel(); ++k) p[k] = float(id * 100 + v * 10 + k) + 0.25f;
      w.add(id, v, static_cast<int>(id % 3), t);
    }
  }
  w.commit();
  Seed s{read(cache.manifest_path(kCacheFingerprint, kCacheSplit)), read(cache.npy_path(kCacheFingerprint, kCacheSplit))};
  // Reproducible: a fixed creation time.
  const size_t at = s.manifest.find("\"created\": \"");
  if (at != std::string::npos) s.manifest.replace(at + 12, 20, "2024-01-01T00:00:00Z");
  if (!cache.open(kCacheFingerprint, kCacheSplit)) std::exit(1);
  return s;
}

std::string checksum_of(const std::string& manifest) {
  const size_t at = manifest.find("\"checksum\": \"");
  return manifest.substr(at + 13, 32);
}

// The checksum and byte count replaced by fuzz_cache's slots (targets.h).
Seed slotted(Seed s) {
  replace(s.manifest, checksum_of(s.manifest), kCacheChecksumSlot);
  replace(s.manifest, "\"bytes\": " + std::to_string(s.npy.size()), std::string("\"bytes\": ") + kCacheBytesSlot);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : ".";
  char tmpl[] = "/tmp/make-cache-seeds-XXXXXX";
  if (!::mkdtemp(tmpl)) return 1;
  const std::string root = tmpl;

  Seed a = make(root, 4, 2, {3, 2}, {2});
  write(out + "/valid-checksum.bin", a.manifest + a.npy);
  const Seed slot = slotted(a);
  write(out + "/valid-slot.bin", slot.manifest + slot.npy);
  Seed b = slotted(make(root, 3, 1, {5}, {}));
  write(out + "/valid-one-dim-slot.bin", b.manifest + b.npy);
  Seed c = slotted(make(root, 2, 3, {2, 1, 2}, {0}));
  write(out + "/valid-three-dims-slot.bin", c.manifest + c.npy);
  Seed empty = make(root, 0, 1, {4}, {});
  write(out + "/valid-empty-split.bin", empty.manifest + empty.npy);
  Seed skipped = slotted(make(root, 2, 2, {4}, {0, 1}));
  write(out + "/valid-all-skipped-slot.bin", skipped.manifest + skipped.npy);

  // Refused: the previous format, truncations, a missing data file.
  Seed v1 = slot;
  replace(v1.manifest, "\"format_version\": 2", "\"format_version\": 1");
  write(out + "/format-version-1.bin", v1.manifest + v1.npy);
  write(out + "/truncated-manifest.bin", slot.manifest.substr(0, slot.manifest.size() / 2) + slot.npy);
  write(out + "/truncated-npy.bin", slot.manifest + slot.npy.substr(0, slot.npy.size() - 10));
  write(out + "/npy-header-only.bin", slot.manifest + slot.npy.substr(0, 64));
  write(out + "/manifest-only.bin", slot.manifest);

  fs::remove_all(root);
  return 0;
}
