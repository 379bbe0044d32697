// The CLI's edges (issue 12): `pipe run --out` refuses a non-empty directory without --force
// and default run directories never collide; --quiet and --verbose; the progress line's text;
// `pipe cache ls/rm --older-than/gc --max-size`; `pipe stages NAME`; `pipe graph --png`.
// Every refusal is checked with its exit code and message.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "cache_cli.h"
#include "cache_store.h"
#include "dot_render.h"
#include "files.h"
#include "process.h"
#include "runner.h"
#include "stage_docs.h"

using namespace pipeline;
using namespace pipeline::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kPipe = std::string(PIPE_BINARY_DIR) + "/pipe";
const std::string kCached = std::string(PIPE_SOURCE_DIR) + "/graphs/cached.yaml";
const std::string kSmall = "--set 'data.per_class=[20, 10, 10]' --set train.epochs=1 --threads 2";

struct Tmp {
  fs::path root;
  explicit Tmp(const std::string& what) : root(fs::temp_directory_path() / fmt::format("pipe-test-cli-{}-{}", what, ::getpid())) {
    fs::remove_all(root);
    fs::create_directories(root);
    fs::permissions(root, fs::perms::owner_all);  // a private cache refuses a root others can write
  }
  ~Tmp() { fs::remove_all(root); }
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Cli {
  int code = -1;
  std::string out, err;
};

// `pipe ARGS` through the shell (ARGS quoted by the caller), in `cwd`, with `env` before it.
Cli pipe_cli(const std::string& args, const fs::path& cwd, const std::string& env = "") {
  const fs::path out = cwd / ".stdout", err = cwd / ".stderr";
  const int status = std::system(
      fmt::format("cd '{}' && {} '{}' {} > '{}' 2> '{}'", cwd.string(), env, kPipe, args, out.string(), err.string()).c_str());
  Cli c;
  c.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  c.out = read_text(out);
  c.err = read_text(err);
  fs::remove(out);
  fs::remove(err);
  check_no_sanitizer_report(c.code, c.err);
  return c;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A complete cache entry of `n` rows whose description names fashion_mnist, decode and convbase.
void put_entry(FeatureCache& cache, const std::string& fp, const std::string& split, int64_t n) {
  FeatureCache::Writer w = cache.begin(fp, split, n, 1,
                                       "source fashion_mnist [x] -> decode(size=[32,32];)[a] -> convbase(batch=64;)[b] | split=" +
                                           split + " views=1");
  for (int64_t id = 0; id < n; ++id) {
    float* p = nullptr;
    w.add(id, 0, 0, Tensor::zeros({64}, &p));
  }
  w.commit();
}

void set_last_used(const FeatureCache& cache, const std::string& fp, const std::string& split, std::time_t t) {
  const timespec times[2] = {{t, 0}, {t, 0}};
  REQUIRE(::utimensat(AT_FDCWD, cache.manifest_path(fp, split).c_str(), times, 0) == 0);
}

std::set<std::string> keys_of(const FeatureCache& cache) {
  std::set<std::string> out;
  for (const CacheEntryInfo& e : cache.list()) out.insert(e.fingerprint + "/" + e.split);
  return out;
}

constexpr std::time_t kDay = 86400;

}  // namespace

TEST_CASE("proc_status_kib reads /proc/self/status fields in KiB, by their whole name") {
  const long rss = proc_status_kib("VmRSS");
  REQUIRE(rss > 0);
  {
    const std::vector<char> block(96 << 20, 1);  // every page written
    const long grown = proc_status_kib("VmRSS");
    CHECK(grown >= rss + (90 << 10));
    CHECK(grown < rss + (200 << 10));  // KiB, not bytes or pages
    CHECK(peak_rss_kib() >= grown);    // VmHWM, the high-water mark
    CHECK(block[12345] == 1);
  }
  CHECK(proc_status_kib("Vm") == -1);  // a prefix of VmRSS, VmHWM, ... is no field
  CHECK(proc_status_kib("NoSuchField") == -1);
}

TEST_CASE("make_new_dir: a directory nobody else got, even for callers racing in the same second") {
  Tmp t("newdir");
  const std::string base = (t.root / "runs" / "g-20261201-101010").string();
  CHECK(make_new_dir(base, 0700) == base);  // parents made too
  CHECK(make_new_dir(base, 0700) == base + "-2");
  CHECK((fs::status(base + "-2").permissions() & fs::perms::all) == fs::perms::owner_all);
  // Eight threads name one directory at once: eight different directories.
  const std::string racing = (t.root / "runs" / "race").string();
  std::vector<std::string> got(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) threads.emplace_back([&, i] { got[i] = make_new_dir(racing, 0700); });
  for (std::thread& th : threads) th.join();
  const std::set<std::string> distinct(got.begin(), got.end());
  CHECK(distinct.size() == got.size());
  CHECK(distinct.count(racing) == 1);
  CHECK(distinct.count(racing + "-8") == 1);
  // A file in the way is skipped like a directory; an unwritable parent is an error naming the path.
  std::ofstream((t.root / "file").string()) << "x";
  CHECK(make_new_dir((t.root / "file").string(), 0700) == (t.root / "file-2").string());
  if (::geteuid() != 0) {  // root writes anywhere
    fs::create_directories(t.root / "ro");
    fs::permissions(t.root / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THROWS_WITH(make_new_dir((t.root / "ro" / "x").string(), 0700), Catch::Contains((t.root / "ro" / "x").string()));
    fs::permissions(t.root / "ro", fs::perms::owner_all);
  }
}

TEST_CASE("pipe run: --out refusals, --force, --resume, --quiet and --verbose") {
  Tmp t("run");
  const fs::path out = t.root / "out";

  // A fresh --out, quiet: only the final summary (no epoch, class, banner or profile lines).
  const Cli quiet = pipe_cli(fmt::format("run '{}' {} --out '{}' --quiet", kCached, kSmall, out.string()), t.root);
  REQUIRE(quiet.code == 0);
  for (const char* line : {"epoch ", "class ", "LibTorch", "pipe: cached:"}) CHECK_FALSE(contains(quiet.err, line));
  CHECK(contains(quiet.out, "test_acc"));
  CHECK_FALSE(contains(quiet.out, "items/s"));  // the profile table
  REQUIRE(fs::exists(out / "summary.json"));

  SECTION("a non-empty --out is refused (exit 2, naming DIR and --force), and nothing is written") {
    const auto before = fs::last_write_time(out / "summary.json");
    const Cli again = pipe_cli(fmt::format("run '{}' {} --out '{}'", kCached, kSmall, out.string()), t.root);
    CHECK(again.code == 2);
    CHECK(contains(again.err, "--out " + out.string() + ": the directory is not empty"));
    CHECK(contains(again.err, "--force"));
    CHECK(fs::last_write_time(out / "summary.json") == before);
    // An existing empty directory is fine.
    fs::create_directories(t.root / "empty");
    CHECK(pipe_cli(fmt::format("run '{}' {} --out '{}' -q", kCached, kSmall, (t.root / "empty").string()), t.root).code == 0);
  }
  SECTION("--force writes into it and keeps what else it holds") {
    std::ofstream(out / "notes.txt") << "mine";
    const Cli forced = pipe_cli(fmt::format("run '{}' {} --out '{}' --force -q", kCached, kSmall, out.string()), t.root);
    CHECK(forced.code == 0);
    CHECK(read_text(out / "notes.txt") == "mine");
  }
  SECTION("--resume continues the run in its own (non-empty) directory, and takes no --out") {
    const Cli both = pipe_cli(fmt::format("run --resume '{}' --out '{}'", out.string(), (t.root / "x").string()), t.root);
    CHECK(both.code == 2);
    CHECK(contains(both.err, "--resume DIR continues the run in DIR; it takes no --out"));
    // --verbose adds the LibTorch banner; a default run prints epoch and class lines.
    const Cli resumed = pipe_cli(fmt::format("run --resume '{}' --set train.epochs=2 --threads 2 --verbose", out.string()), t.root);
    CHECK(resumed.code == 0);
    CHECK(contains(resumed.err, "pipe: LibTorch "));
    CHECK(contains(resumed.err, "epoch   2/2"));
    CHECK(contains(resumed.err, "class 0 "));
    CHECK(contains(resumed.out, "items/s"));
  }
  SECTION("--quiet and --verbose together are a usage error") {
    CHECK(pipe_cli(fmt::format("run '{}' -q -v", kCached), t.root).code == 2);
  }
}

TEST_CASE("default run directories never collide: two runs in one second get two directories") {
  Tmp t("collide");
  // Every name a run could take in the next minute exists already (with a file of ours), so
  // both runs, started together, must find a free name by mkdir: -2, -3, ...
  const std::time_t now = std::time(nullptr);
  std::set<fs::path> taken;
  for (std::time_t s = now - 1; s < now + 60; ++s) {
    std::tm tm{};
    localtime_r(&s, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    const fs::path d = t.root / "runs" / fmt::format("cached-{}", stamp);
    fs::create_directories(d);
    std::ofstream(d / "mine.txt") << "x";
    taken.insert(d);
  }
  const std::string cwd = t.root.string();
  const std::vector<std::string> args = {kPipe,   "run",          kCached,       "--set", "data.per_class=[20, 10, 10]",
                                         "--set", "train.epochs=1", "--threads", "1",     "--no-progress"};
  Child a = spawn(args, (t.root / "cache").string(), [&] { (void)!::chdir(cwd.c_str()); });
  Child b = spawn(args, (t.root / "cache").string(), [&] { (void)!::chdir(cwd.c_str()); });
  std::string err_a, err_b;
  CHECK(finish(a, &err_a) == 0);
  CHECK(finish(b, &err_b) == 0);
  std::set<fs::path> runs;
  for (const auto& e : fs::directory_iterator(t.root / "runs"))
    if (fs::exists(e.path() / "summary.json")) runs.insert(e.path());
  CHECK(runs.size() == 2);
  for (const fs::path& r : runs) {
    INFO(r);
    CHECK_FALSE(taken.count(r));
    CHECK(fs::exists(r / "graph.yaml"));
  }
  for (const fs::path& d : taken) CHECK(fs::directory_iterator(d)->path().filename() == "mine.txt");
  // The default verbosity: class lines, no LibTorch banner (that is --verbose's).
  CHECK(contains(err_a, "class 1 t-shirt"));
  CHECK_FALSE(contains(err_a + err_b, "LibTorch"));
}

TEST_CASE("the progress line: rate, ETA, loss and widths, without a terminal") {
  ProgressLine p{"epoch 3 train", 300, 600, 2.0, -1};
  const std::string line = format_progress(p, 30);
  CHECK(line == "  epoch 3 train        [###############...............] 300/600     150 img/s  ETA  0:02");
  p.loss = 0.43216;
  CHECK(format_progress(p, 30) == line + "  loss 0.4322");
  // done is padded to total's width, so the line does not shift as it grows.
  p.done = 7;
  p.elapsed_s = 1.0;
  CHECK(contains(format_progress(p, 30), "]   7/600       7 img/s  ETA  1:25"));
  // The first half second, or nothing done yet: no rate or ETA to speak of.
  p.elapsed_s = 0.2;
  CHECK(contains(format_progress(p, 30), "7/600       - img/s  ETA     -"));
  p.done = 0;
  p.elapsed_s = 5;
  CHECK(contains(format_progress(p, 30), "[..............................]   0/600       - img/s"));
  // Hours, a full bar, and another bar width.
  ProgressLine slow{"extract", 1, 10000, 1.0, -1};
  CHECK(contains(format_progress(slow, 10), "[..........]     1/10000       1 img/s  ETA 2:46:39"));
  ProgressLine full{"epoch 1 test", 50, 50, 0.5, -1};
  CHECK(contains(format_progress(full, 10), "[##########] 50/50     100 img/s  ETA  0:00"));
  // The label column is 20 wide: the bar starts at the same place for every label.
  CHECK(format_progress(full, 10).find('[') == format_progress(slow, 10).find('['));
}

TEST_CASE("cache sizes, days, ages and node lists parse and print as documented") {
  CHECK(parse_size("4096") == 4096);
  CHECK(parse_size("500M") == 500ull << 20);
  CHECK(parse_size("2G") == 2ull << 30);
  CHECK(parse_size("2gib") == 2ull << 30);
  CHECK(parse_size("1.5K") == 1536);
  CHECK(parse_size("1T") == 1ull << 40);
  CHECK(parse_size("0") == 0);
  for (const char* bad : {"", "-1", "5X", "M", "2 G", "1e9", "0x10", "9999999T"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_size(bad), std::invalid_argument);
  }
  CHECK_THROWS_WITH(parse_size("5X"), "--max-size '5X': expected a size such as 500M or 2G (a number, then K, M, G or T: powers of 1024)");
  CHECK(parse_days("30") == 30 * 86400.0);
  CHECK(parse_days("0.5") == 43200.0);
  for (const char* bad : {"", "-3", "abc", "3d", "1e3"}) {
    INFO(bad);
    CHECK_THROWS_WITH(parse_days(bad), fmt::format("--older-than '{}': expected a number of days, such as 30 or 0.5", bad));
  }
  CHECK(size_text(512) == "512 B");
  CHECK(size_text(1536) == "1.50 KiB");
  CHECK(size_text(20ull << 20) == "20.0 MiB");
  CHECK(size_text(512ull << 20) == "512 MiB");
  CHECK(size_text(3ull << 30) == "3.00 GiB");
  CHECK(age_text(1000, 1030) == "just now");
  CHECK(age_text(1000, 1000 + 300) == "5 min ago");
  CHECK(age_text(1000, 1000 + 5 * 3600) == "5 h ago");
  CHECK(age_text(1000, 1000 + 3 * kDay) == "3 days ago");
  CHECK(age_text(0, 1000) == "-");
  CHECK(cache_nodes_short("source fashion_mnist [fmnist:abc] -> decode(size=[32,32];)[x] -> convbase(b=1;)[y]<-[#0] | "
                          "split=train views=1") == "fashion_mnist>decode>convbase");
  CHECK(cache_nodes_short("source folder [/data] | split=test views=1") == "folder");
}

TEST_CASE("cache ls, rm --older-than and gc --max-size: table, JSON, last use, LRU, entries being written") {
  Tmp t("cache");
  const std::string dir = (t.root / "cache").string();
  FeatureCache cache(dir);
  const std::time_t now = std::time(nullptr);
  const std::string a(32, 'a'), b(32, 'b'), c(32, 'c');
  put_entry(cache, a, "train", 40);
  put_entry(cache, b, "train", 20);
  put_entry(cache, c, "validation", 10);
  set_last_used(cache, a, "train", now - 3 * kDay);
  set_last_used(cache, b, "train", now - 2 * kDay);
  set_last_used(cache, c, "validation", now - 1 * kDay);

  SECTION("ls: a row per entry and a total, --json the same") {
    const auto entries = cache.list();
    const std::string table = cache_table(entries, now);
    std::istringstream lines(table);
    std::string header, first;
    std::getline(lines, header);
    std::getline(lines, first);
    CHECK(header.rfind("key           nodes                          split       views      rows        size  last used", 0) == 0);
    CHECK(first.rfind("aaaaaaaaaaaa  fashion_mnist>decode>convbase  train           1        40", 0) == 0);
    CHECK(contains(first, "3 days ago"));
    uint64_t total = 0;
    for (const CacheEntryInfo& e : entries) total += e.bytes;
    CHECK(contains(table, fmt::format("total  3 entries, {}\n", size_text(total))));

    const Cli ls = pipe_cli(fmt::format("cache ls --dir '{}'", dir), t.root);
    CHECK(ls.code == 0);
    CHECK(contains(ls.out, "cache " + dir + "\n" + header));
    const Cli js = pipe_cli(fmt::format("cache ls --dir '{}' --json", dir), t.root);
    REQUIRE(js.code == 0);
    const json j = json::parse(js.out);
    REQUIRE(j.at("entries").size() == 3);
    CHECK(j.at("total").at("bytes").get<uint64_t>() == total);
    CHECK(j.at("entries")[1].at("nodes") == "fashion_mnist>decode>convbase");
    CHECK(j.at("entries")[1].at("rows") == 20);
    CHECK(j.at("entries")[2].at("last_used") == utc_time(now - kDay));
  }
  SECTION("a cache hit records the entry's last use") {
    REQUIRE(cache.open(a, "train") != nullptr);
    for (const CacheEntryInfo& e : cache.list())
      if (e.fingerprint == a) CHECK(e.last_used >= now);
  }
  SECTION("rm --older-than DAYS removes the entries last used before then") {
    const Cli rm = pipe_cli(fmt::format("cache rm --older-than 2.5 --dir '{}'", dir), t.root);
    CHECK(rm.code == 0);
    CHECK(contains(rm.out, "removed 1 entry"));
    CHECK(keys_of(cache) == std::set<std::string>{b + "/train", c + "/validation"});
    // With a prefix, only those entries.
    CHECK(pipe_cli(fmt::format("cache rm c --older-than 0.5 --dir '{}'", dir), t.root).code == 0);
    CHECK(keys_of(cache) == std::set<std::string>{b + "/train"});
  }
  SECTION("gc --max-size evicts least recently used first, down to the size") {
    const auto entries = cache.list();
    const uint64_t size_a = entries[0].bytes, total = size_a + entries[1].bytes + entries[2].bytes;
    const Cli gc = pipe_cli(fmt::format("cache gc --max-size {} --dir '{}'", total - size_a, dir), t.root);
    CHECK(gc.code == 0);
    CHECK(contains(gc.out, "removed 1 entry"));
    CHECK(keys_of(cache) == std::set<std::string>{b + "/train", c + "/validation"});
    CHECK(gc_victims(entries, total) == std::vector<size_t>{});
    CHECK(gc_victims(entries, 0) == std::vector<size_t>{0, 1, 2});
  }
  SECTION("an entry being written is never evicted") {
    std::optional<FeatureCache::Writer> writing = cache.try_begin(a, "train", 40, 1, "rewrite");
    REQUIRE(writing);
    CHECK_FALSE(cache.evict(a, "train"));
    const Cli gc = pipe_cli(fmt::format("cache gc --max-size 0 --dir '{}'", dir), t.root);
    CHECK(gc.code == 0);
    CHECK(contains(gc.out, "removed 2 entries"));
    CHECK(contains(gc.out, "1 entry being written left alone"));
    CHECK(keys_of(cache) == std::set<std::string>{a + "/train"});
    const Cli rm = pipe_cli(fmt::format("cache rm --older-than 0 --dir '{}'", dir), t.root);
    CHECK(contains(rm.out, "removed 0 entries"));
    CHECK(keys_of(cache) == std::set<std::string>{a + "/train"});
  }
  SECTION("bad SIZE and DAYS, and rm without a choice, are usage errors") {
    const Cli size = pipe_cli(fmt::format("cache gc --max-size 5X --dir '{}'", dir), t.root);
    CHECK(size.code == 2);
    CHECK(contains(size.err, "pipe cache gc: --max-size '5X': expected a size such as 500M or 2G"));
    const Cli days = pipe_cli(fmt::format("cache rm --older-than soon --dir '{}'", dir), t.root);
    CHECK(days.code == 2);
    CHECK(contains(days.err, "pipe cache rm: --older-than 'soon': expected a number of days"));
    CHECK(pipe_cli(fmt::format("cache gc --dir '{}'", dir), t.root).code == 2);  // --max-size is required
    const Cli none = pipe_cli(fmt::format("cache rm --dir '{}'", dir), t.root);
    CHECK(none.code == 2);
    CHECK(contains(none.err, "give a fingerprint prefix, --older-than DAYS or --all"));
    const Cli all = pipe_cli(fmt::format("cache rm --all --older-than 3 --dir '{}'", dir), t.root);
    CHECK(all.code == 2);
    CHECK(contains(all.err, "--all removes every entry"));
    CHECK(keys_of(cache).size() == 3);
  }
}

TEST_CASE("pipe validate and pipe plan build the data source: what it refuses is an error at data:") {
  Tmp t("validate-data");
  fs::create_directories(t.root / "photos" / "cat");  // a class directory without an image
  const fs::path graph = t.root / "g.yaml";
  std::ofstream(graph) << fmt::format(R"(# a folder without images
data: {{source: folder, path: "{}"}}
nodes:
  decode: {{stage: decode, size: [32, 32]}}
  features: {{stage: convbase, model: "builtin:small_vgg"}}
  head: {{stage: dense_head}}
edges: [decode -> features -> head]
)", (t.root / "photos").string());
  const std::string where = graph.string() + ":2:7: error: folder: no images under " + (t.root / "photos").string();
  for (const char* command : {"validate", "plan"}) {
    const Cli c = pipe_cli(fmt::format("{} '{}'", command, graph.string()), t.root);
    CHECK(c.code == 2);
    CHECK(contains(c.err, where));
    CHECK(c.out.empty());
  }
  // One image in each of two classes: none left for validation, which `pipe run` would only
  // have found at its start. Five each: valid.
  fs::create_directories(t.root / "photos" / "dog");
  const auto add_images = [&](int n) {
    for (const char* cls : {"cat", "dog"})
      for (int i = 0; i < n; ++i)
        REQUIRE(cv::imwrite((t.root / "photos" / cls / fmt::format("{}.png", i)).string(),
                            cv::Mat(8, 8, CV_8UC3, cv::Scalar(10, 20, 30 + i))));
  };
  add_images(1);
  const Cli few = pipe_cli(fmt::format("validate '{}'", graph.string()), t.root);
  CHECK(few.code == 2);
  CHECK(contains(few.err, graph.string() + ":2:7: error: folder: validation_split gives the validation split no images"));
  add_images(5);
  const Cli ok = pipe_cli(fmt::format("validate '{}'", graph.string()), t.root);
  CHECK(ok.code == 0);
  CHECK(contains(ok.out, ": ok (3 nodes: decode -> features -> head)"));
}

TEST_CASE("pipe stages NAME prints one stage's section, an unknown name is refused with a hint") {
  Tmp t("stages");
  const Cli one = pipe_cli("stages decode", t.root);
  CHECK(one.code == 0);
  std::string hint;
  const StageEntry* decode = find_stage(Registry::global(), "decode", &hint);
  REQUIRE(decode != nullptr);
  CHECK(one.out == stage_text(*decode));
  CHECK(contains(stages_text(Registry::global()), one.out));
  CHECK(pipe_cli("stages decode --markdown", t.root).out == stage_markdown(*decode));

  const Cli typo = pipe_cli("stages decod", t.root);
  CHECK(typo.code == 2);
  CHECK(typo.err == "pipe stages: unknown stage 'decod' (did you mean 'decode'?)\n");
  const Cli none = pipe_cli("stages qqqqqqqq", t.root);
  CHECK(none.code == 2);
  CHECK(contains(none.err, "unknown stage 'qqqqqqqq'"));
  CHECK_FALSE(contains(none.err, "did you mean"));
}

TEST_CASE("pipe graph --png draws the graph with dot, and says which package to install without it") {
  Tmp t("png");
  const Cli missing = pipe_cli(fmt::format("graph '{}' --png '{}'", kCached, (t.root / "x.png").string()), t.root,
                               "PATH=/nonexistent");
  CHECK(missing.code == 2);
  CHECK(contains(missing.err, "`dot` is not installed"));
  CHECK(contains(missing.err, "graphviz"));
  CHECK_FALSE(fs::exists(t.root / "x.png"));
  if (find_on_path("dot").empty()) {
    WARN("skipped the drawing: Graphviz's dot is not installed (sudo apt-get install graphviz)");
    return;
  }
  const fs::path png = t.root / "cached.png";
  const Cli drawn = pipe_cli(fmt::format("graph '{}' --png '{}'", kCached, png.string()), t.root);
  CHECK(drawn.code == 0);
  CHECK(drawn.out.empty());  // the PNG, not the DOT text
  const std::string bytes = read_text(png);
  REQUIRE(bytes.size() > 8);
  CHECK(bytes.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
  const cv::Mat img = cv::imread(png.string(), cv::IMREAD_COLOR);
  REQUIRE_FALSE(img.empty());
  CHECK(img.cols > 100);
}
