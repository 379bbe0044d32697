// Proof that the sanitizer jobs can fail: each mode commits one bug the configured
// sanitizer must report (tests/CMakeLists.txt expects the report's text), and `tbb-handoff`
// is correct code that passes data between oneTBB tasks, which must stay silent. That one
// fails when oneTBB is not instrumented: TSan cannot see TBB's internal synchronisation and
// reports the handoff as a race, as it would all over the executor.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

namespace {

// Allocated out of line, so that the compiler does not know the size at the access and
// UBSan's object-size check stays out of the way: ASan is what must report this.
__attribute__((noinline)) int* four_ints() { return new int[4]{}; }

int heap_overflow(int n) {
  int* a = four_ints();
  const int v = a[n];  // n == 4: one past the end
  delete[] a;
  return v;
}

int signed_overflow(int n) {
  int x = 0x7ffffff0;
  return x + n;  // n > 15 overflows
}

struct Base { virtual ~Base() = default; };
struct Left : Base { int l = 1; };
struct Right : Base { int r = 2; };

// A static_cast to the wrong derived type (-fsanitize=vptr): shows that the one vptr entry in
// ubsan.supp (a oneTBB header function) leaves the check on everywhere else.
__attribute__((noinline)) Base* make_left() { return new Left; }
int bad_downcast() {
  Base* b = make_left();
  const int v = static_cast<Right*>(b)->r;
  delete b;
  return v;
}

void* leak(size_t n) { return std::malloc(n); }

// Unsynchronised increments from two oneTBB threads. Each task waits (on a relaxed atomic,
// which gives TSan no happens-before) until both run, so they overlap on two threads.
int race() {
  int counter = 0;
  std::atomic<int> arrived{0};
  tbb::task_arena arena(2);
  arena.execute([&] {
    tbb::parallel_for(0, 2, [&](int) {
      arrived.fetch_add(1, std::memory_order_relaxed);
      while (arrived.load(std::memory_order_relaxed) < 2) std::this_thread::yield();
      for (int i = 0; i < 1000; ++i) ++*static_cast<volatile int*>(&counter);
    }, tbb::simple_partitioner());
  });
  return counter;
}

// Plain (non-atomic) data written in one flow-graph node and read in the next and after
// wait_for_all(): correct, ordered by TBB's own queues.
int tbb_handoff() {
  tbb::task_arena arena(2);
  int sum = 0;
  arena.execute([&] {
    tbb::flow::graph g;
    std::vector<int> results(64, 0);
    tbb::flow::function_node<int, int> produce(g, tbb::flow::unlimited, [&](int i) {
      results[static_cast<size_t>(i)] = i * 2;
      return i;
    });
    tbb::flow::function_node<int, int> consume(g, tbb::flow::serial, [&](int i) {
      sum += results[static_cast<size_t>(i)];
      return 0;
    });
    tbb::flow::make_edge(produce, consume);
    for (int i = 0; i < 64; ++i) produce.try_put(i);
    g.wait_for_all();
    for (int r : results) sum += r;
  });
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const int n = argc > 2 ? std::atoi(argv[2]) : 4;  // from argv so the compiler cannot fold the bug away
  int r = 0;
  if (mode == "heap-overflow") r = heap_overflow(n);
  else if (mode == "signed-overflow") r = signed_overflow(n + 16);
  else if (mode == "bad-downcast") r = bad_downcast();
  else if (mode == "leak") r = leak(static_cast<size_t>(n) * 1000) != nullptr;
  else if (mode == "race") r = race();
  else if (mode == "tbb-handoff") r = tbb_handoff();
  else { std::fprintf(stderr, "usage: sanitizer_canary heap-overflow|signed-overflow|bad-downcast|leak|race|tbb-handoff\n"); return 2; }
  std::printf("canary %s finished: %d\n", mode.c_str(), r);
  return 0;
}
