// Backbones users already have: convbase `weights:` takes a PyTorch state dict, as
// torch.save(model.state_dict()) writes it (torchvision's vgg16-397923af.pth is one: keys
// features.N.weight / features.N.bias for the conv base, classifier.* for the dense top).
// The VGG16-sized files are written here with torch::pickle_save, the C++ side of the zip
// format, and re-packed into the legacy layout; tests/data/state_dicts/ holds small files
// written by Python's torch.save in both formats (tests/data/make_state_dicts.py).
// LibTorch first: its glog defines CHECK, which Catch's must replace.
#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <opencv2/core.hpp>

#include "pipe/testing.h"
#include "torch_pickle.h"
#include "torch_util.h"

using namespace pipeline;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

// A random-init VGG16 conv base under torchvision's names, plus a classifier tensor that a
// conv base has no use for. `edit` may change the dict before it is written.
std::string write_state_dict(const fs::path& file, uint64_t seed,
                             const std::function<void(c10::Dict<std::string, torch::Tensor>&)>& edit = {}) {
  torch::nn::Sequential base = torchu::make_builtin("vgg16");
  at::Generator gen = torchu::make_generator(seed);
  torchu::init_module(*base, gen);
  c10::Dict<std::string, torch::Tensor> sd;
  for (const auto& p : base->named_parameters()) sd.insert("features." + p.key(), p.value().detach().clone());
  sd.insert("classifier.0.weight", torch::zeros({4096, 25088 / 64}));
  if (edit) edit(sd);
  const std::vector<char> bytes = torch::pickle_save(sd);
  std::ofstream(file, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return file.string();
}

std::vector<Sample> images() {
  std::vector<Sample> out;
  for (int i = 0; i < 3; ++i) {
    cv::Mat m(32, 32, CV_8UC3);
    cv::RNG rng(static_cast<uint64_t>(i + 1));  // the same pixels on every call
    rng.fill(m, cv::RNG::UNIFORM, 0, 256);
    out.push_back(testing::image_sample(m, i));
  }
  return out;
}

std::string convbase(const std::string& extra) {
  return fmt::format(R"({{stage: convbase, model: "builtin:vgg16", device: cpu, {}}})", extra);
}

std::string fixture(const std::string& name) { return std::string(PIPE_SOURCE_DIR) + "/tests/data/state_dicts/" + name; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path.string();
}

std::string le(uint64_t v, int n) {
  std::string out;
  for (int k = 0; k < n; ++k) out += static_cast<char>((v >> (8 * k)) & 0xff);
  return out;
}

// The first three pickles of a legacy torch.save file: magic number, protocol 1001, sys_info {}.
const std::string kLegacyHead = std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 15) +
                                std::string("\x80\x02M\xe9\x03.", 6) + std::string("\x80\x02}.", 4);

// A zip-format dict of float tensors (torch::pickle_save's storages "0", "1", ...) re-packed
// into the legacy layout: its data.pkl, the pickled key list, each storage as int64 count + bytes.
std::string to_legacy(const std::string& zip_path) {
  caffe2::serialize::PyTorchStreamReader r(zip_path);
  auto record = [&](const std::string& name) {
    auto [data, size] = r.getRecord(name);
    return std::string(static_cast<const char*>(data.get()), size);
  };
  std::string keys = "\x80\x02](", storages;
  for (int k = 0; r.hasRecord(fmt::format("data/{}", k)); ++k) {
    const std::string key = std::to_string(k), bytes = record("data/" + key);
    keys += "X" + le(key.size(), 4) + key;
    storages += le(bytes.size() / 4, 8) + bytes;
  }
  return kLegacyHead + record("data.pkl") + keys + "e." + storages;
}

// A zip archive of the records given (name -> bytes), as torch.save lays one out.
std::string write_zip(const fs::path& path, const std::vector<std::pair<std::string, std::string>>& records) {
  caffe2::serialize::PyTorchStreamWriter w(path.string());
  for (const auto& [name, bytes] : records) w.writeRecord(name, bytes.data(), bytes.size());
  w.writeEndOfFile();
  return path.string();
}

// The module tests/data/make_state_dicts.py saves: conv 3->4 3x3, BN, ReLU, conv 4->2 1x1.
torch::nn::Sequential tiny_net(int64_t channels = 4) {
  namespace nn = torch::nn;
  return nn::Sequential(nn::Conv2d(nn::Conv2dOptions(3, channels, 3)), nn::BatchNorm2d(channels), nn::ReLU(),
                        nn::Conv2d(nn::Conv2dOptions(channels, 2, 1).bias(false)));
}

// expected.pt, read by LibTorch's own unpickler (a plain dict of contiguous tensors).
std::vector<std::pair<std::string, torch::Tensor>> expected_tensors() {
  const std::string bytes = read_bytes(fixture("expected.pt"));
  const c10::IValue v = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& e : v.toGenericDict()) out.emplace_back(e.key().toStringRef(), e.value().toTensor());
  return out;
}

std::string load_error(const std::string& path, int64_t channels = 4) {
  torch::nn::Sequential net = tiny_net(channels);
  try {
    torchu::load_state_dict(*net, path, "test");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("convbase loads a torchvision-style state dict: same features as the same weights, every tensor checked") {
  const fs::path dir = fs::temp_directory_path() / fmt::format("pipe-state-dict-{}", ::getpid());
  fs::create_directories(dir);
  const std::string good = write_state_dict(dir / "vgg16.pth", 3);

  SECTION("features equal those of the same weights made by init_seed") {
    testing::Harness from_file(convbase(fmt::format("weights: '{}'", good)));
    testing::Harness from_seed(convbase("init_seed: 3"));
    const std::vector<Sample> a = from_file.process_batch(images()), b = from_seed.process_batch(images());
    REQUIRE(a.size() == 3);
    for (size_t i = 0; i < a.size(); ++i) {
      REQUIRE(a[i].features.shape == std::vector<int64_t>({512, 1, 1}));
      CHECK(std::equal(a[i].features.ptr(), a[i].features.ptr() + 512, b[i].features.ptr()));
    }
    // Different weights, different features: the file's values are what ran.
    testing::Harness other(convbase("init_seed: 4"));
    const std::vector<Sample> c = other.process_batch(images());
    CHECK_FALSE(std::equal(a[0].features.ptr(), a[0].features.ptr() + 512, c[0].features.ptr()));
  }

  SECTION("the same dict in the legacy torch.save layout gives the same features") {
    const std::string legacy = write_bytes(dir / "vgg16-legacy.pth", to_legacy(good));
    REQUIRE(torchpk::is_legacy(read_bytes(legacy)));
    testing::Harness from_legacy(convbase(fmt::format("weights: '{}'", legacy)));
    testing::Harness from_seed(convbase("init_seed: 3"));
    const std::vector<Sample> a = from_legacy.process_batch(images()), b = from_seed.process_batch(images());
    REQUIRE(a.size() == 3);
    for (size_t i = 0; i < a.size(); ++i)
      CHECK(std::equal(a[i].features.ptr(), a[i].features.ptr() + 512, b[i].features.ptr()));
  }

  SECTION("a missing tensor and a wrong shape are named") {
    const std::string missing = write_state_dict(dir / "missing.pth", 3, [](auto& sd) { REQUIRE(sd.erase("features.28.bias") == 1); });
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", missing))),
                      Catch::Contains("state dict '" + missing + "' has no tensor '28.bias' (nor 'features.28.bias')"));
    const std::string shape = write_state_dict(dir / "shape.pth", 3, [](auto& sd) {
      sd.insert_or_assign("features.0.weight", torch::zeros({64, 1, 3, 3}));
    });
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", shape))),
                      Catch::Contains("tensor '0.weight' has shape [64, 1, 3, 3], the model needs [64, 3, 3, 3]"));
    // An empty OrderedDict (as Python pickles one) is a state dict without the tensors.
    const std::string ordered = write_zip(dir / "ordered.pth", {{"data.pkl", std::string("\x80\x02", 2) +
                                                                     "ccollections\nOrderedDict\nq" + std::string(1, '\0') + ")R."}});
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", ordered))),
                      Catch::Contains("state dict '" + ordered + "' has no tensor '0.weight'"));
    const std::string not_dict = (dir / "list.pth").string();
    const std::vector<char> bytes = torch::pickle_save(c10::List<int64_t>({1, 2}));
    std::ofstream(not_dict, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", not_dict))),
                      Catch::Contains("cannot read state dict '" + not_dict + "'"));
  }
  fs::remove_all(dir);
}

TEST_CASE("Python's torch.save of an OrderedDict loads in both formats with its exact values, views included") {
  const auto expected = expected_tensors();
  REQUIRE(expected.size() == 12);
  for (const char* name : {"ordered_zip.pth", "ordered_legacy.pth", "rebuild_v1.pth"}) {
    INFO(name);
    const auto got = torchu::read_state_dict(fixture(name));
    REQUIRE(got.size() == expected.size());
    std::map<std::string, torch::Tensor> by_name;
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].first == expected[i].first);  // the file's order
      CHECK(got[i].second.dtype() == expected[i].second.dtype());
      CHECK(torch::equal(got[i].second, expected[i].second));
      by_name[got[i].first] = got[i].second;
    }
    // Views of one storage stay views: offset and strides as saved.
    CHECK(by_name["extra.view"].storage_offset() == 8);
    CHECK(by_name["extra.t"].strides().vec() == std::vector<int64_t>({1, 6}));
    CHECK(by_name["extra.t"].data_ptr() == by_name["extra.base"].data_ptr());
    CHECK(by_name["1.num_batches_tracked"].item<int64_t>() == 7);

    // Into the module: every parameter and buffer (extra.* is not the module's, skipped).
    torch::nn::Sequential net = tiny_net();
    torchu::load_state_dict(*net, fixture(name), "test");
    for (const auto& p : net->named_parameters()) CHECK(torch::equal(p.value(), by_name.at(p.key())));
    for (const auto& b : net->named_buffers()) CHECK(torch::equal(b.value(), by_name.at(b.key())));
  }
}

TEST_CASE("unreadable or hostile state dict files are refused, naming the file and the byte") {
  const fs::path dir = fs::temp_directory_path() / fmt::format("pipe-state-dict-bad-{}", ::getpid());
  fs::create_directories(dir);
  const std::string legacy = read_bytes(fixture("ordered_legacy.pth"));

  SECTION("a global outside the allow-list is never called") {
    const std::string evil = "\x80\x02" "cos\nsystem\nX\x05\x00\x00\x00touchq\x00\x85R."s;
    const std::string zip = write_zip(dir / "evil.pth", {{"data.pkl", evil}});
    CHECK_THAT(load_error(zip), Catch::Contains("test: cannot read state dict '" + zip + "'") &&
                                    Catch::Contains("data.pkl byte 2: global 'os.system' is not allowed"));
    const std::string old = write_bytes(dir / "evil-legacy.pth", kLegacyHead + evil);
    CHECK_THAT(load_error(old), Catch::Contains(old) && Catch::Contains("byte 27: global 'os.system' is not allowed"));
    // Not even as the callable of a tensor's persistent id or storage type.
    const std::string pid = "\x80\x02(X\x07\x00\x00\x00storagecbuiltins\neval\ntQ."s;
    CHECK_THAT(load_error(write_zip(dir / "pid.pth", {{"data.pkl", pid}})),
               Catch::Contains("global 'builtins.eval' is not allowed"));
  }

  SECTION("truncated files") {
    for (size_t cut : {size_t{10}, size_t{900}, legacy.size() - 10}) {
      INFO(cut);
      const std::string path = write_bytes(dir / "cut.pth", legacy.substr(0, cut));
      CHECK_THAT(load_error(path), Catch::Contains("cannot read state dict '" + path + "': byte ") &&
                                       Catch::Contains("truncated"));
    }
    const std::string zip = read_bytes(fixture("ordered_zip.pth"));
    const std::string path = write_bytes(dir / "cut-zip.pth", zip.substr(0, zip.size() / 2));
    CHECK_THAT(load_error(path), Catch::Contains("cannot read state dict '" + path + "'"));
  }

  SECTION("storage sizes that disagree with the tensors or the data") {
    // 0.weight's storage declared 100 elements (its 4x3x3x3 view needs 108).
    std::string small = legacy;
    const std::string pid = "X\x03\x00\x00\x00" "cpuq\x07Kl"s;
    const size_t at = small.find(pid);
    REQUIRE(at != std::string::npos);
    small[at + pid.size() - 1] = 100;
    CHECK_THAT(load_error(write_bytes(dir / "small.pth", small)),
               Catch::Contains("reaches beyond its storage of 100 elements"));
    // The element count before a storage's bytes corrupted.
    std::string count = legacy;
    const auto parsed = torchpk::parse_legacy(legacy);
    const size_t data = parsed.data.at(parsed.dict.tensors.at(0).storage);
    count[data - 8] = 109;
    CHECK_THAT(load_error(write_bytes(dir / "count.pth", count)),
               Catch::Contains(fmt::format("byte {}: storage", data - 8)) &&
                   Catch::Contains("holds 109 elements, its tensors' pickle says 108"));
    // A zip record shorter than its storage.
    caffe2::serialize::PyTorchStreamReader r(fixture("ordered_zip.pth"));
    std::vector<std::pair<std::string, std::string>> records;
    for (const std::string name : {"data.pkl", "data/0", "data/1", "data/2", "data/3", "data/4", "data/5", "data/6",
                                   "data/7", "data/8", "data/9"}) {
      auto [ptr, size] = r.getRecord(name);
      records.emplace_back(name, std::string(static_cast<const char*>(ptr.get()), size));
    }
    records[1].second.resize(100);
    CHECK_THAT(load_error(write_zip(dir / "short.pth", records)),
               Catch::Contains("record data/0 holds 100 bytes, its tensors' pickle says 108 x 4"));
  }

  SECTION("a wrong shape names the tensor before any data is read") {
    CHECK_THAT(load_error(fixture("ordered_legacy.pth"), 5),
               Catch::Contains("tensor '0.weight' has shape [4, 3, 3, 3], the model needs [5, 3, 3, 3]"));
  }
  fs::remove_all(dir);
}

// By hand, not in CI (hidden): a real torchvision file against the same weights as TorchScript.
//   /usr/bin/python3 -c 'import torch, torchvision; v = torchvision.models.vgg16(weights=...)
//     torch.save(v.state_dict(), "vgg16.pth"); torch.jit.script(v.features.eval()).save("vgg16_features.pt")'
//   PIPE_VGG16_WEIGHTS=vgg16.pth PIPE_VGG16_SCRIPT=vgg16_features.pt build/tests/test_state_dict "[.vgg16-files]"
// (PIPE_VGG16_PARAMS: more convbase params for both, e.g. "optimize: off".)
TEST_CASE("a torchvision VGG16 state dict gives the features of the same weights as TorchScript", "[.vgg16-files]") {
  const char* weights = std::getenv("PIPE_VGG16_WEIGHTS");
  const char* script = std::getenv("PIPE_VGG16_SCRIPT");
  REQUIRE(weights);
  REQUIRE(script);
  const char* params = std::getenv("PIPE_VGG16_PARAMS");
  const std::string more = params && *params ? std::string(", ") + params : "";
  testing::Harness from_dict(convbase(fmt::format("weights: '{}'{}", weights, more)));
  testing::Harness from_script(fmt::format(R"({{stage: convbase, model: '{}', device: cpu{}}})", script, more));
  const std::vector<Sample> a = from_dict.process_batch(images()), b = from_script.process_batch(images());
  REQUIRE(a.size() == b.size());
  float max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].features.shape == b[i].features.shape);
    for (int64_t k = 0; k < 512; ++k) {
      max_diff = std::max(max_diff, std::abs(a[i].features.ptr()[k] - b[i].features.ptr()[k]));
      max_abs = std::max(max_abs, std::abs(b[i].features.ptr()[k]));
    }
  }
  WARN(fmt::format("max |dict - script| = {} (max |feature| {})", max_diff, max_abs));
  CHECK(max_diff <= 1e-5f * std::max(1.0f, max_abs));
}
