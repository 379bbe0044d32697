// Backbones users already have: convbase `weights:` takes a PyTorch state dict, as
// torch.save(model.state_dict()) writes it (torchvision's vgg16-397923af.pth is one: keys
// features.N.weight / features.N.bias for the conv base, classifier.* for the dense top).
// The file is written here with torch::pickle_save, the C++ side of the same format.
// LibTorch first: its glog defines CHECK, which Catch's must replace.
#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <opencv2/core.hpp>

#include "pipe/testing.h"
#include "torch_util.h"

using namespace pipeline;
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

  SECTION("a missing tensor and a wrong shape are named") {
    const std::string missing = write_state_dict(dir / "missing.pth", 3, [](auto& sd) { REQUIRE(sd.erase("features.28.bias") == 1); });
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", missing))),
                      Catch::Contains("state dict '" + missing + "' has no tensor '28.bias' (nor 'features.28.bias')"));
    const std::string shape = write_state_dict(dir / "shape.pth", 3, [](auto& sd) {
      sd.insert_or_assign("features.0.weight", torch::zeros({64, 1, 3, 3}));
    });
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", shape))),
                      Catch::Contains("tensor '0.weight' has shape [64, 1, 3, 3], the model needs [64, 3, 3, 3]"));
    // What Python's torch.save(model.state_dict()) writes starts with an OrderedDict: the
    // message says how to convert it (the rest of such a pickle does not matter here).
    const std::string ordered = (dir / "ordered.pth").string();
    {
      caffe2::serialize::PyTorchStreamWriter w(ordered);
      const std::string pkl = std::string("\x80\x02", 2) + "ccollections\nOrderedDict\nq" + std::string(1, '\0') + ")R.";
      w.writeRecord("data.pkl", pkl.data(), pkl.size());
      w.writeEndOfFile();
    }
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", ordered))),
                      Catch::Contains("pickles a collections.OrderedDict") &&
                          Catch::Contains("torch.save(dict(torch.load(\"IN.pth\")), \"OUT.pth\")"));
    const std::string not_dict = (dir / "list.pth").string();
    const std::vector<char> bytes = torch::pickle_save(c10::List<int64_t>({1, 2}));
    std::ofstream(not_dict, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    CHECK_THROWS_WITH(testing::Harness(convbase(fmt::format("weights: '{}'", not_dict))),
                      Catch::Contains("is neither a torch::save()d module nor a state dict"));
  }
  fs::remove_all(dir);
}
