#include "bench.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <fmt/format.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "cache_store.h"
#include "executor.h"
#include "json.h"
#include "runner.h"
#include "testing.h"
#include "torch_runtime.h"

namespace fs = std::filesystem;

namespace pipeline {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Figure {
  std::string name, unit, target_text;
  double value = 0, bound = 0, ratio = 0, target = 0;
  bool higher_is_better = true;  // ratio >= target, else ratio <= target
  bool met() const { return higher_is_better ? ratio >= target : ratio <= target; }
};

// A folder-source tree of `n` random-texture JPEGs of side `px` per class (2 classes).
fs::path make_tree(const fs::path& root, int n, int px) {
  const fs::path dir = root / fmt::format("jpeg{}-{}", px, n);
  if (fs::exists(dir / "done")) return dir;
  for (int c = 0; c < 2; ++c) {
    const fs::path d = dir / "train" / (c ? "b" : "a");
    fs::create_directories(d);
    cv::RNG rng(static_cast<uint64_t>(px * 1000 + c));
    for (int i = 0; i < n / 2; ++i) {
      cv::Mat m(px, px, CV_8UC3);
      rng.fill(m, cv::RNG::UNIFORM, 0, 256);
      cv::imwrite((d / fmt::format("{:05d}.jpg", i)).string(), m);
    }
  }
  std::ofstream(dir / "done") << "";
  return dir;
}

std::string machine() {
  std::ifstream cpu("/proc/cpuinfo");
  std::string line, model = "?";
  while (std::getline(cpu, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return fmt::format("{} x {}", std::thread::hardware_concurrency(), model);
}

// A pass over the tree's training images through `stages` (built from YAML nodes).
struct Chain {
  std::unique_ptr<Source> source;
  std::vector<std::unique_ptr<Stage>> stages;
  std::vector<PassNode> nodes;

  Chain(const fs::path& tree, const std::vector<std::pair<std::string, std::string>>& yaml) {
    source = testing::make_source(fmt::format("{{source: folder, path: \"{}\"}}", tree.string()));
    for (const auto& [name, y] : yaml) {
      stages.push_back(testing::make_stage(y, name));
      const YAML::Node n = YAML::Load(y);
      const StageEntry* e = Registry::global().find(n["stage"].as<std::string>());
      PassNode p;
      p.name = name;
      p.stage = e->schema.name;
      p.kind = e->schema.kind;
      p.impl = stages.back().get();
      p.random = e->schema.random;
      p.concurrency = e->schema.concurrency;
      nodes.push_back(p);
    }
  }

  PassSpec pass(int epoch, bool ordered = true) const {
    PassSpec p;
    p.split = Split::train;
    p.epoch = epoch;
    p.seed = 1;
    p.count = source->size(Split::train);
    const Source* src = source.get();
    p.describe = [src](int64_t i) { return src->describe(Split::train, i); };
    p.load = [src](Sample& s) { src->load(s); };
    p.nodes = nodes;
    p.sink_batch = 20;
    p.ordered = ordered;
    return p;
  }
};

// images/s of the bare conv base on pre-decoded images, same batch.
double bare_conv(const fs::path& tree, int px, const std::string& convbase_yaml, int batch, int reps) {
  Chain decode(tree, {{"decode", fmt::format("{{stage: decode, size: [{}, {}]}}", px, px)}});
  std::vector<Sample> decoded;
  Rng rng(1, 2, 3, 4, 5);
  for (int64_t i = 0; i < decode.source->size(Split::train); ++i) {
    Sample s = decode.source->describe(Split::train, i);
    decode.source->load(s);
    static_cast<MapStage*>(decode.stages[0].get())->process(s, rng);
    decoded.push_back(s);
  }
  auto conv = testing::make<BatchStage>(convbase_yaml, "features");
  {  // warm-up: the first forward creates the conv primitives
    Batch b;
    for (size_t k = 0; k < std::min(decoded.size(), static_cast<size_t>(batch)); ++k) b.samples.push_back(decoded[k]);
    conv->process(b);
  }
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    for (size_t i = 0; i < decoded.size(); i += static_cast<size_t>(batch)) {
      Batch b;
      for (size_t k = i; k < std::min(decoded.size(), i + static_cast<size_t>(batch)); ++k) b.samples.push_back(decoded[k]);
      conv->process(b);
    }
    best = std::min(best, now_s() - t0);
  }
  return static_cast<double>(decoded.size()) / best;
}

// Peak RSS (KiB) of a child `pipe run` of `graph` on a folder tree.
long child_peak_rss_kib(const fs::path& graph, const fs::path& out, const fs::path& cache, int threads) {
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::setenv("PIPE_CACHE_DIR", cache.c_str(), 1);
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, STDOUT_FILENO);
    ::dup2(devnull, STDERR_FILENO);
    const std::string t = std::to_string(threads);
    ::execl("/proc/self/exe", "pipe", "run", graph.c_str(), "--no-progress", "--threads", t.c_str(), "--out",
            out.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(fmt::format("bench: pipe run {} failed", graph.string()));
  return ru.ru_maxrss;
}

// Every figure's name, in table order ({threads} is the thread count of the run).
const std::vector<std::string> kFigureNames = {
    "extraction small_vgg 32px",
    "extraction vgg16 64px",
    "cached head epoch",
    "augmented epoch small_vgg 32px",
    "determinism cost (ordered / unordered epoch time)",
    "decode+augment 28px scaling 1 -> {threads} threads",
    "decode+augment 150px scaling 1 -> {threads} threads",
    "peak RSS, regime B on 10x the images",
    "peak RSS, regime A on 10x the images",
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Removes the generated data when the bench made its own temp dir, also on an exception.
struct TempDir {
  fs::path path;
  bool own = false;
  ~TempDir() {
    std::error_code ec;
    if (own) fs::remove_all(path, ec);
  }
};

}  // namespace

int run_bench(const BenchOptions& o) {
  const auto want = [&](const std::string& name) {
    return o.only.empty() || lower(name).find(lower(o.only)) != std::string::npos;
  };
  if (std::none_of(kFigureNames.begin(), kFigureNames.end(), want)) {
    std::fprintf(stderr, "pipe bench: --only '%s' matches no figure; the figures are:\n", o.only.c_str());
    for (const std::string& n : kFigureNames) std::fprintf(stderr, "  %s\n", n.c_str());
    return 2;
  }
  const int threads = configure_threads(o.threads);
  const auto name_of = [&](size_t k) {
    std::string n = kFigureNames[k];
    const size_t at = n.find("{threads}");
    if (at != std::string::npos) n.replace(at, 9, std::to_string(threads));
    return n;
  };
  TempDir tmp;
  tmp.own = o.data_dir.empty();
  tmp.path = tmp.own ? fs::temp_directory_path() / fmt::format("pipe-bench-{}", ::getpid()) : fs::path(o.data_dir);
  const fs::path root = tmp.path;
  fs::create_directories(root);
  // The machine is shared: every side of every ratio is the best of `reps` measurements.
  const int reps = o.smoke ? 1 : 3;
  const int n = o.smoke ? 64 : 1024;
  const int n_vgg = o.smoke ? 16 : 256;
  std::vector<Figure> figs;
  const std::string weights = std::string(PIPE_SOURCE_DIR) + "/models/small_vgg_fmnist.pt";
  const std::string small = fmt::format("{{stage: convbase, model: \"builtin:small_vgg\", weights: \"{}\", batch: 64}}", weights);
  const std::string vgg = "{stage: convbase, model: \"builtin:vgg16\", batch: 16}";
  std::printf("pipe bench%s\nmachine: %s\nruntime: %s\nthreads: %d (TBB workers and LibTorch intra-op)\n\n",
              o.smoke ? " --smoke (a few batches per figure; ratios not meaningful)" : "", machine().c_str(),
              torch_runtime_info().c_str(), threads);
  std::fflush(stdout);

  // 1. Extraction: JPEG folder -> decode -> convbase -> cache writer, vs the bare conv base.
  const auto extraction = [&](const std::string& label, int count, int px, const std::string& conv, int batch) {
    const fs::path tree = make_tree(root, count, px == 32 ? 28 : px);
    Chain c(tree, {{"decode", fmt::format("{{stage: decode, size: [{}, {}]}}", px, px)}, {"features", conv}});
    FeatureCache store((root / "cache").string());
    Profile prof;
    {  // warm-up on the first batch, without the writer: both sides measured warm
      PassSpec warm = c.pass(0);
      warm.count = std::min<int64_t>(warm.count, batch);
      run_pass(warm, prof);
    }
    double best = 0;
    for (int rep = 0; rep < reps; ++rep) {
      const std::string fp = fmt::format("bench{}x{}x{}", px, ::getpid(), rep);
      FeatureCache::Writer w = store.begin(fp, "train", c.source->size(Split::train), 1, "bench");
      PassSpec p = c.pass(0);
      PassNode writer;
      writer.name = "memo";
      writer.stage = "cache";
      writer.kind = StageKind::cache;
      writer.write = [&w](const Sample& s) { w.add(s.id, 0, s.label, s.features); };
      p.nodes.push_back(writer);
      const PassResult r = run_pass(p, prof);
      w.commit();
      best = std::max(best, static_cast<double>(r.consumed) / r.seconds);
      store.remove(fp);
    }
    Figure f;
    f.name = label;
    f.unit = "images/s";
    f.value = best;
    f.bound = bare_conv(tree, px, conv, batch, reps);
    f.target = 0.90;
    figs.push_back(f);
  };
  if (want(name_of(0))) extraction(name_of(0), n, 32, small, 64);
  if (want(name_of(1))) extraction(name_of(1), n_vgg, 64, vgg, 16);

  // 2. Cached head epoch: reading features from the cache through the executor vs a bare loop.
  if (want(name_of(2))) {
    const int64_t count = o.smoke ? 200 : 2000;
    FeatureCache store((root / "cache").string());
    const std::string fp = fmt::format("benchhead{}", ::getpid());
    {
      FeatureCache::Writer w = store.begin(fp, "train", count, 1, "bench head");
      std::vector<float> v(128 * 4 * 4);
      cv::RNG rng(7);
      for (int64_t i = 0; i < count; ++i) {
        for (float& x : v) x = static_cast<float>(rng.uniform(0.0, 1.0)) + (i % 2 ? 0.1f : 0.f);
        w.add(i, 0, static_cast<int>(i % 2), Tensor::copy_of(v.data(), {128, 4, 4}));
      }
      w.commit();
    }
    auto entry = store.open(fp, "train");
    const std::string head_yaml = "{stage: dense_head, hidden: 256, dropout: 0.5, lr: 1.0e-4}";
    RunInfo info;
    info.seed = 1;
    info.classes = {"a", "b"};
    auto run_head = [&](bool executor) {
      auto head = testing::make<SinkStage>(head_yaml, "head");
      head->begin_run(info);
      head->begin_epoch(Split::train, 1);
      const double t0 = now_s();
      if (executor) {
        PassSpec p;
        p.count = count;
        p.epoch = 1;
        p.describe = [&](int64_t i) {
          Sample s;
          s.id = i;
          s.label = entry->label(i);
          return s;
        };
        p.load = [&](Sample& s) { s.features = entry->features(s.id, 0); };
        PassNode k;
        k.name = "head";
        k.stage = "dense_head";
        k.kind = StageKind::sink;
        k.impl = head.get();
        p.nodes = {k};
        p.sink_batch = 20;
        p.cheap_load = true;  // as the runner does for a cache hit
        Profile prof;
        run_pass(p, prof);
      } else {
        // The bound: the same head on the same features, already in memory, in batches of 20.
        std::vector<Batch> batches;
        for (int64_t i = 0; i < count; i += 20) {
          Batch b;
          for (int64_t k = i; k < std::min(count, i + 20); ++k) {
            Sample s;
            s.id = k;
            s.label = entry->label(k);
            s.features = Tensor::copy_of(entry->features(k, 0).ptr(), {128, 4, 4});
            b.samples.push_back(s);
          }
          batches.push_back(std::move(b));
        }
        const double t1 = now_s();
        for (Batch& b : batches) head->consume(b);
        return now_s() - t1;
      }
      return now_s() - t0;
    };
    run_head(false);  // warm-up: first-touch of pages and BLAS buffers
    Figure f;
    f.name = name_of(2);
    f.unit = "s";
    f.value = 1e30;
    f.bound = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
      f.value = std::min(f.value, run_head(true));
      f.bound = std::min(f.bound, run_head(false));
    }
    f.target = 1.20;
    f.higher_is_better = false;
    figs.push_back(f);
    store.remove(fp);
  }

  // 3 and 6. Augmented epoch vs the bare conv base; the cost of ordering.
  if (want(name_of(3)) || want(name_of(4))) {
    const fs::path tree = make_tree(root, n, 28);
    const std::vector<std::pair<std::string, std::string>> chain = {
        {"decode", "{stage: decode, size: [32, 32]}"},
        {"augment", "{stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.2, shear: 0.2, zoom: 0.2, horizontal_flip: true}"},
        {"features", small}};
    Chain c(tree, chain);
    Profile prof;
    run_pass(c.pass(1), prof);  // warm-up
    double t_ordered = 1e30, t_unordered = 1e30;
    int64_t consumed = 0;
    for (int rep = 0; rep < reps; ++rep) {  // alternate, so drift hits both sides alike
      const PassResult a = run_pass(c.pass(2 + 2 * rep, true), prof);
      const PassResult b = run_pass(c.pass(3 + 2 * rep, false), prof);
      t_ordered = std::min(t_ordered, a.seconds);
      t_unordered = std::min(t_unordered, b.seconds);
      consumed = a.consumed;
    }
    if (want(name_of(3))) {
      Figure f;
      f.name = name_of(3);
      f.unit = "images/s";
      f.value = static_cast<double>(consumed) / t_ordered;
      f.bound = bare_conv(tree, 32, small, 64, reps);
      f.target = 0.85;
      figs.push_back(f);
    }
    Figure d;
    d.name = name_of(4);
    d.unit = "s";
    d.value = t_ordered;
    d.bound = t_unordered;
    d.target = 1.05;
    d.higher_is_better = false;
    if (want(d.name)) figs.push_back(d);
  }

  // 4. Decode + augment alone: scaling from 1 to all threads.
  for (int px : {28, 150}) {
    const std::string fig_name = name_of(px == 28 ? 5 : 6);
    if (!want(fig_name)) continue;
    const fs::path tree = make_tree(root, o.smoke ? 64 : (px == 28 ? 2000 : 400), px);
    Chain c(tree, {{"decode", fmt::format("{{stage: decode, size: [{}, {}]}}", px, px)},
                   {"augment", "{stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.2, shear: 0.2, zoom: 0.2, horizontal_flip: true}"}});
    double ips[2] = {0, 0};
    const int ts[2] = {1, threads};
    for (int k = 0; k < 2; ++k) {
      configure_threads(ts[k]);
      Profile prof;
      run_pass(c.pass(1), prof);  // warm-up (page cache)
      for (int rep = 0; rep < reps; ++rep) {
        const PassResult r = run_pass(c.pass(2 + rep), prof);
        ips[k] = std::max(ips[k], static_cast<double>(r.consumed) / r.seconds);
      }
    }
    configure_threads(threads);
    Figure f;
    f.name = fig_name;
    f.unit = "images/s";
    f.value = ips[1];
    f.bound = ips[0];
    f.target = 1.8;
    figs.push_back(f);
  }

  // 5. Memory: peak RSS of whole runs on N and 10 N images (child processes).
  {
    // N above train.in_flight (256), so that the small run already fills the pipeline.
    const int small_n = o.smoke ? 32 : 500;
    const std::string weights_path = weights;
    const auto graph_for = [&](const fs::path& tree, bool augmented, const std::string& tag) {
      const fs::path g = root / fmt::format("mem-{}.yaml", tag);
      std::ofstream(g) << fmt::format(R"(data: {{source: folder, path: "{}"}}
nodes:
  decode: {{stage: decode, size: [32, 32]}}
{}  features: {{stage: convbase, model: "builtin:small_vgg", weights: "{}", batch: 64}}
{}  head: {{stage: dense_head}}
edges: [{}]
train: {{epochs: 2, batch: 20}}
)", tree.string(), augmented ? "  augment: {stage: augment, rotation: 40, horizontal_flip: true}\n" : "", weights_path,
                                      augmented ? "" : "  memo: {stage: cache}\n",
                                      augmented ? "decode -> augment -> features -> head" : "decode -> features -> memo -> head");
      return g;
    };
    for (bool augmented : {true, false}) {
      const std::string fig_name = name_of(augmented ? 7 : 8);
      if (!want(fig_name)) continue;
      // A peak RSS moves by +-10% from run to run with thread timing (which glibc arena a
      // batch's tensors come from), independently of N: like every other figure, each side
      // is the best of 3, each run on a fresh cache so that regime A extracts every time.
      long rss[2] = {0, 0};
      for (int k = 0; k < 2; ++k) {
        const int count = k == 0 ? small_n : 10 * small_n;
        const fs::path tree = make_tree(root, count, 28);
        const std::string tag = fmt::format("{}{}", augmented ? "b" : "a", count);
        for (int rep = 0; rep < (o.smoke ? 1 : 3); ++rep) {
          fs::remove_all(root / ("run-" + tag));
          fs::remove_all(root / ("cache-" + tag));
          const long peak = child_peak_rss_kib(graph_for(tree, augmented, tag), root / ("run-" + tag),
                                               root / ("cache-" + tag), threads);
          rss[k] = rep == 0 ? peak : std::min(rss[k], peak);
        }
      }
      Figure f;
      f.name = fig_name;
      f.unit = "KiB";
      f.value = static_cast<double>(rss[1]);
      f.bound = static_cast<double>(rss[0]);
      f.target = 1.10;
      f.higher_is_better = false;
      figs.push_back(f);
    }
  }

  Json all = Json::array();
  std::printf("%-52s %12s %12s %8s %8s %5s\n", "figure", "value", "bound", "ratio", "target", "met");
  for (Figure& f : figs) {
    f.ratio = f.bound > 0 ? f.value / f.bound : 0;
    std::printf("%-52s %12.2f %12.2f %8.3f %7s%.2f %5s  %s\n", f.name.c_str(), f.value, f.bound, f.ratio,
                f.higher_is_better ? ">=" : "<=", f.target, f.met() ? "yes" : "no", f.unit.c_str());
    Json j = Json::object();
    j.set("name", f.name);
    j.set("value", f.value);
    j.set("bound", f.bound);
    j.set("ratio", f.ratio);
    j.set("target", f.target);
    j.set("target_op", std::string(f.higher_is_better ? ">=" : "<="));  // met = ratio <op> target
    j.set("met", f.met());
    j.set("unit", f.unit);
    all.push(std::move(j));
  }
  Json doc = Json::object();
  doc.set("machine", machine());
  doc.set("runtime", torch_runtime_info());
  doc.set("threads", threads);
  doc.set("smoke", o.smoke);
  if (!o.only.empty()) doc.set("only", o.only);
  doc.set("figures", all);
  write_file_atomic(o.out, doc.dump(2) + "\n");
  std::printf("wrote %s\n", o.out.c_str());
  for (const Figure& f : figs)
    if (!(f.value > 0 && f.bound > 0)) return 1;
  return 0;
}

}  // namespace pipeline
