#include "torch_pickle.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>

namespace pipeline::torchpk {

int64_t element_size(DType t) {
  switch (t) {
    case DType::Float64: case DType::Int64: return 8;
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: case DType::Int16: return 2;
    case DType::Int8: case DType::UInt8: case DType::Bool: return 1;
  }
  return 1;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::Int16: return "int16";
    case DType::Int8: return "int8";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "?";
}

namespace {

// The globals a state dict needs; the GLOBAL opcode refuses every other name, so nothing
// else can be called, whatever the rest of the file does.
const std::map<std::string, DType, std::less<>> kStorageTypes = {
    {"torch.FloatStorage", DType::Float32}, {"torch.DoubleStorage", DType::Float64},
    {"torch.HalfStorage", DType::Float16},  {"torch.BFloat16Storage", DType::BFloat16},
    {"torch.LongStorage", DType::Int64},    {"torch.IntStorage", DType::Int32},
    {"torch.ShortStorage", DType::Int16},   {"torch.CharStorage", DType::Int8},
    {"torch.ByteStorage", DType::UInt8},    {"torch.BoolStorage", DType::Bool}};
constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildV2 = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuild = "torch._utils._rebuild_tensor";         // before torch 0.4
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr const char* kSize = "torch.Size";
constexpr const char* kTypeTag = "torch.jit._pickle.restore_type_tag";  // LibTorch's pickle_save
const char* const kCallables[] = {kOrderedDict, kRebuildV2, kRebuild, kRebuildParameter, kSize, kTypeTag};

// Bounds the memory a hostile pickle can make this reader use: every object made, memo
// entry and stack or container slot filled costs one. VGG16's state dict (32 tensors) costs
// 2,342: about 70 per tensor, so this allows ~30,000 tensors.
constexpr int64_t kBudget = int64_t{1} << 21;
constexpr int64_t kMaxDims = 64;  // as LibTorch

enum class Kind { None, Bool, Int, BigInt, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };

const char* kind_name(Kind k) {
  static const char* const names[] = {"None",  "bool", "int",    "long int", "float",   "string",
                                      "tuple", "list", "dict",   "global",   "storage", "tensor"};
  return names[static_cast<int>(k)];
}

// One Python object. Owned by the machine's arena and referred to by pointer: lists and
// dicts are shared between the stack and the memo (APPENDS mutates the memoized list), and
// an arena frees reference cycles a crafted pickle can build, which shared_ptr would leak.
struct Obj {
  Kind kind = Kind::None;
  int64_t i = 0;          // Int, Bool; Storage: element offset of the view in its storage
  int64_t n = 0;          // Storage: elements of the view
  double f = 0;           // Float
  std::string s;          // Str, Global ("module.name"), BigInt (bytes); Storage: the key
  DType dtype = DType::Float32;      // Storage
  std::vector<Obj*> items;           // Tuple, List; Dict: key, value, key, value, ...
  size_t tensor = 0;                 // Tensor: index in Machine::tensors
};

bool checked_mul(int64_t a, int64_t b, int64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
bool checked_add(int64_t a, int64_t b, int64_t& out) { return !__builtin_add_overflow(a, b, &out); }

class Machine {
 public:
  Machine(std::string_view data, size_t pos, std::string where)
      : data_(data), pos_(pos), where_(std::move(where)) {}

  // Runs to STOP and returns the pickled object; pos() is then the byte after STOP.
  Obj* run();
  size_t pos() const { return pos_; }

  [[noreturn]] void fail(size_t at, const std::string& msg) const {
    throw std::runtime_error(fmt::format("{}byte {}: {}", where_, at, msg));
  }

  std::vector<TensorInfo> tensors;              // every tensor rebuilt, unnamed
  std::map<std::string, StorageInfo> storages;  // every storage a persistent id declared

 private:
  // ---- input
  const char* take(uint64_t n) {
    if (n > data_.size() - pos_) fail(pos_, fmt::format("truncated: {} more byte(s) needed, {} left", n, data_.size() - pos_));
    const char* p = data_.data() + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }
  uint64_t le(int n) {
    const auto* p = reinterpret_cast<const unsigned char*>(take(static_cast<uint64_t>(n)));
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
    return v;
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string_view::npos) fail(pos_, "truncated: unterminated GLOBAL name");
    std::string s(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }

  // ---- objects and the stack
  void spend(int64_t n = 1) {
    budget_ -= n;
    if (budget_ < 0) fail(op_at_, fmt::format("more than {} objects: not a state dict", kBudget));
  }
  Obj* make(Kind k) {
    spend();
    arena_.emplace_back();
    arena_.back().kind = k;
    return &arena_.back();
  }
  Obj* make_int(int64_t v) { Obj* o = make(Kind::Int); o->i = v; return o; }
  Obj* make_str(const char* p, uint64_t n) { Obj* o = make(Kind::Str); o->s.assign(p, n); return o; }
  void push(Obj* o) { spend(); stack_.push_back(o); }
  Obj* pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail(op_at_, "stack underflow");
    Obj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  Obj* top() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail(op_at_, "stack underflow");
    return stack_.back();
  }
  std::vector<Obj*> pop_mark() {
    if (marks_.empty()) fail(op_at_, "no MARK to pop to");
    std::vector<Obj*> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Obj* expect(Obj* o, Kind k, const char* what) {
    if (o->kind != k) fail(op_at_, fmt::format("{} is a {}, expected a {}", what, kind_name(o->kind), kind_name(k)));
    return o;
  }
  Obj* tuple(std::vector<Obj*> items) { Obj* t = make(Kind::Tuple); t->items = std::move(items); return t; }
  void append(Obj* list, const std::vector<Obj*>& items) {
    expect(list, Kind::List, "APPEND's target");
    spend(static_cast<int64_t>(items.size()));
    list->items.insert(list->items.end(), items.begin(), items.end());
  }
  void set_items(Obj* dict, const std::vector<Obj*>& kv) {
    expect(dict, Kind::Dict, "SETITEM's target");
    if (kv.size() % 2) fail(op_at_, "SETITEMS with an odd number of items");
    spend(static_cast<int64_t>(kv.size()));
    dict->items.insert(dict->items.end(), kv.begin(), kv.end());
  }
  void put(uint64_t key) {
    if (memo_.count(key) == 0) spend();
    memo_[key] = top();
  }
  Obj* get(uint64_t key) {
    const auto it = memo_.find(key);
    if (it == memo_.end()) fail(op_at_, fmt::format("memo {} was never stored", key));
    return it->second;
  }

  bool step(unsigned char op);
  void push_int(unsigned char op);
  void push_string(unsigned char op);
  void push_container(unsigned char op);
  Obj* global(const std::string& module, const std::string& name);
  Obj* call(Obj* callable, Obj* args);
  Obj* ordered_dict(const std::vector<Obj*>& args);
  Obj* rebuild_tensor(const std::vector<Obj*>& args);
  std::vector<int64_t> dims(Obj* o, const char* what);
  Obj* storage(Obj* pid);
  void build();

  std::string_view data_;
  size_t pos_;
  std::string where_;
  size_t op_at_ = 0;  // the opcode being run, for messages
  int64_t budget_ = kBudget;
  std::deque<Obj> arena_;
  std::vector<Obj*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Obj*> memo_;
};

Obj* Machine::run() {
  for (;;) {
    op_at_ = pos_;
    const auto op = static_cast<unsigned char>(*take(1));
    if (!step(op)) break;
  }
  if (stack_.size() != 1 || !marks_.empty()) fail(op_at_, "STOP with a malformed stack");
  return stack_.back();
}

// The protocol-2 opcodes torch.save writes for a state dict (pickletools' names), plus the
// protocol 3/4 forms of the same values. Returns false at STOP.
bool Machine::step(unsigned char op) {
  switch (op) {
    case 0x80: if (le(1) > 5) fail(op_at_, "unknown pickle protocol"); break;  // PROTO
    case 0x95: take(8); break;  // FRAME: a read-ahead hint
    case '.': return false;     // STOP
    case 'c': { std::string module = line(); push(global(module, line())); break; }  // GLOBAL
    case 0x93: {  // STACK_GLOBAL
      const std::string name = expect(pop(), Kind::Str, "STACK_GLOBAL's name")->s;
      push(global(expect(pop(), Kind::Str, "STACK_GLOBAL's module")->s, name));
      break;
    }
    case 'N': push(make(Kind::None)); break;
    case 0x88: case 0x89: { Obj* b = make(Kind::Bool); b->i = op == 0x88; push(b); break; }
    case 'G': {  // BINFLOAT, big-endian
      uint64_t bits = 0;
      for (const char* p = take(8), *e = p + 8; p != e; ++p) bits = (bits << 8) | static_cast<unsigned char>(*p);
      Obj* f = make(Kind::Float);
      std::memcpy(&f->f, &bits, sizeof bits);
      push(f);
      break;
    }
    case 'J': case 'K': case 'M': case 0x8a: push_int(op); break;
    case 'X': case 0x8c: case 0x8d: case 'U': case 'T': case 'C': case 'B': push_string(op); break;
    case '(': spend(); marks_.push_back(stack_.size()); break;  // MARK
    case '0': pop(); break;                                      // POP
    case '1': pop_mark(); break;                                 // POP_MARK
    case '2': push(top()); break;                                // DUP
    case 'q': put(le(1)); break;                                 // BINPUT
    case 'r': put(le(4)); break;                                 // LONG_BINPUT
    case 0x94: put(memo_.size()); break;                         // MEMOIZE
    case 'h': push(get(le(1))); break;                           // BINGET
    case 'j': push(get(le(4))); break;                           // LONG_BINGET
    case 'R': case 0x81: { Obj* args = pop(); push(call(pop(), args)); break; }  // REDUCE, NEWOBJ
    case 'b': build(); break;
    case 'Q': push(storage(pop())); break;  // BINPERSID
    default: push_container(op);
  }
  return true;
}

void Machine::push_int(unsigned char op) {
  if (op == 'K') return push(make_int(static_cast<int64_t>(le(1))));                // BININT1
  if (op == 'M') return push(make_int(static_cast<int64_t>(le(2))));                // BININT2
  if (op == 'J') return push(make_int(static_cast<int32_t>(static_cast<uint32_t>(le(4)))));  // BININT
  const auto n = static_cast<int>(le(1));  // LONG1: n-byte two's complement
  if (n > 8) {  // only the legacy format's magic number is this wide
    Obj* big = make(Kind::BigInt);
    big->s.assign(take(static_cast<uint64_t>(n)), static_cast<size_t>(n));
    return push(big);
  }
  uint64_t v = n == 0 ? 0 : le(n);
  if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
  push(make_int(static_cast<int64_t>(v)));
}

void Machine::push_string(unsigned char op) {
  uint64_t n = 0;
  switch (op) {
    case 0x8c: case 'U': case 'C': n = le(1); break;  // SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES
    case 0x8d: n = le(8); break;                        // BINUNICODE8
    case 'T': {                                         // BINSTRING: signed
      const auto len = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
      if (len < 0) fail(op_at_, "negative string length");
      n = static_cast<uint64_t>(len);
      break;
    }
    default: n = le(4);  // BINUNICODE, BINBYTES
  }
  push(make_str(take(n), n));
}

void Machine::push_container(unsigned char op) {
  switch (op) {
    case ')': return push(tuple({}));                                    // EMPTY_TUPLE
    case 't': return push(tuple(pop_mark()));                            // TUPLE
    case 0x85: { Obj* a = pop(); return push(tuple({a})); }              // TUPLE1
    case 0x86: { Obj* b = pop(); Obj* a = pop(); return push(tuple({a, b})); }  // TUPLE2
    case 0x87: { Obj* c = pop(); Obj* b = pop(); Obj* a = pop(); return push(tuple({a, b, c})); }
    case ']': return push(make(Kind::List));                             // EMPTY_LIST
    case 'l': { Obj* l = make(Kind::List); append(l, pop_mark()); return push(l); }  // LIST
    case 'a': { Obj* v = pop(); return append(top(), {v}); }             // APPEND
    case 'e': { std::vector<Obj*> v = pop_mark(); return append(top(), v); }  // APPENDS
    case '}': return push(make(Kind::Dict));                             // EMPTY_DICT
    case 'd': { Obj* d = make(Kind::Dict); set_items(d, pop_mark()); return push(d); }  // DICT
    case 's': { Obj* v = pop(); Obj* k = pop(); return set_items(top(), {k, v}); }  // SETITEM
    case 'u': { std::vector<Obj*> kv = pop_mark(); return set_items(top(), kv); }   // SETITEMS
    default:
      fail(op_at_, fmt::format("opcode 0x{:02x} is not one torch.save writes for a state dict", op));
  }
}

Obj* Machine::global(const std::string& module, const std::string& name) {
  const std::string full = module + "." + name;
  bool allowed = kStorageTypes.count(full) > 0;
  for (const char* c : kCallables) allowed = allowed || full == c;
  if (!allowed)
    fail(op_at_, fmt::format("global '{}' is not allowed: a state dict of tensors needs only collections.OrderedDict, "
                             "torch._utils._rebuild_tensor(_v2), torch._utils._rebuild_parameter, torch storage "
                             "types and LibTorch's type tags (loading other pickles would run their code)",
                             full));
  Obj* g = make(Kind::Global);
  g->s = full;
  return g;
}

Obj* Machine::call(Obj* callable, Obj* args) {
  expect(callable, Kind::Global, "REDUCE's callable");
  const std::vector<Obj*>& a = expect(args, Kind::Tuple, "REDUCE's arguments")->items;
  const std::string& f = callable->s;
  if (f == kOrderedDict) return ordered_dict(a);
  if (f == kRebuildV2 || f == kRebuild) {
    // v2: (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    const bool v2 = f == kRebuildV2;
    if (v2 ? (a.size() != 6 && a.size() != 7) : a.size() != 4)
      fail(op_at_, fmt::format("{} with {} arguments", f, a.size()));
    return rebuild_tensor(a);
  }
  if (f == kRebuildParameter) {  // (data, requires_grad, backward_hooks): the data is the value
    if (a.size() != 3) fail(op_at_, fmt::format("{} with {} arguments", f, a.size()));
    return expect(a[0], Kind::Tensor, "a parameter's data");
  }
  if (f == kSize) {  // torch.Size((d0, d1, ...)): old files' sizes
    if (a.size() != 1) fail(op_at_, fmt::format("{} with {} arguments", f, a.size()));
    return expect(a[0], Kind::Tuple, "torch.Size's argument");
  }
  if (f == kTypeTag) {  // (object, "Dict[str, Tensor]"): the object, typed for TorchScript
    if (a.size() != 2) fail(op_at_, fmt::format("{} with {} arguments", f, a.size()));
    return a[0];
  }
  fail(op_at_, fmt::format("'{}' is not callable", f));
}

// Python 3 pickles OrderedDict() and adds the items with SETITEMS; Python 2 passes them as
// one list of [key, value] pairs.
Obj* Machine::ordered_dict(const std::vector<Obj*>& args) {
  Obj* d = make(Kind::Dict);
  if (args.empty()) return d;
  if (args.size() != 1 || (args[0]->kind != Kind::List && args[0]->kind != Kind::Tuple))
    fail(op_at_, "OrderedDict's argument is not a list of pairs");
  std::vector<Obj*> kv;
  for (Obj* pair : args[0]->items) {
    if ((pair->kind != Kind::List && pair->kind != Kind::Tuple) || pair->items.size() != 2)
      fail(op_at_, "OrderedDict's argument is not a list of pairs");
    kv.insert(kv.end(), pair->items.begin(), pair->items.end());
  }
  set_items(d, kv);
  return d;
}

// BUILD sets an object's state: torch.save gives the OrderedDict its `_metadata` (versions
// of the modules' state formats) this way. Nothing here depends on it.
void Machine::build() {
  pop();
  if (top()->kind != Kind::Dict) fail(op_at_, fmt::format("BUILD on a {}", kind_name(top()->kind)));
}

std::vector<int64_t> Machine::dims(Obj* o, const char* what) {
  if (o->kind != Kind::Tuple && o->kind != Kind::List) expect(o, Kind::Tuple, what);
  if (static_cast<int64_t>(o->items.size()) > kMaxDims) fail(op_at_, fmt::format("{} has more than {} dimensions", what, kMaxDims));
  std::vector<int64_t> out;
  for (Obj* d : o->items) {
    if (expect(d, Kind::Int, what)->i < 0) fail(op_at_, fmt::format("{} has a negative entry", what));
    out.push_back(d->i);
  }
  return out;
}

// A view (offset, sizes, strides) of a storage: every element it reaches must be in it.
Obj* Machine::rebuild_tensor(const std::vector<Obj*>& a) {
  const Obj* st = expect(a[0], Kind::Storage, "a tensor's storage");
  const int64_t offset = expect(a[1], Kind::Int, "a tensor's storage offset")->i;
  TensorInfo t;
  t.sizes = dims(a[2], "a tensor's size");
  t.strides = dims(a[3], "a tensor's stride");
  if (t.sizes.size() != t.strides.size())
    fail(op_at_, fmt::format("a tensor has {} sizes but {} strides", t.sizes.size(), t.strides.size()));
  int64_t last = offset;  // the highest element index the view reaches, or offset when empty
  bool empty = false;
  for (size_t k = 0; k < t.sizes.size(); ++k) {
    int64_t step = 0;
    empty = empty || t.sizes[k] == 0;
    if (t.sizes[k] > 0 && (!checked_mul(t.sizes[k] - 1, t.strides[k], step) || !checked_add(last, step, last)))
      fail(op_at_, "a tensor's extent overflows");
  }
  if (offset < 0 || (empty ? offset > st->n : last >= st->n))
    fail(op_at_, fmt::format("a tensor's view (offset {}, size [{}], stride [{}]) reaches beyond its storage of {} elements",
                             offset, fmt::join(t.sizes, ", "), fmt::join(t.strides, ", "), st->n));
  t.storage = st->s;
  t.dtype = st->dtype;
  t.offset = st->i + offset;  // both within the storage: no overflow
  Obj* o = make(Kind::Tensor);
  o->tensor = tensors.size();
  tensors.push_back(std::move(t));
  return o;
}

// ('storage', storage type, key, location, numel[, view]); view = None or (view key,
// element offset, numel) in the legacy format, which could save views of a storage.
Obj* Machine::storage(Obj* pid) {
  const std::vector<Obj*>& p = expect(pid, Kind::Tuple, "a persistent id")->items;
  if ((p.size() != 5 && p.size() != 6) || p[0]->kind != Kind::Str || p[0]->s != "storage")
    fail(op_at_, "a persistent id that is not a storage");
  const auto type = kStorageTypes.find(expect(p[1], Kind::Global, "a storage type")->s);
  if (type == kStorageTypes.end()) fail(op_at_, fmt::format("'{}' is not a storage type", p[1]->s));
  const std::string& key = expect(p[2], Kind::Str, "a storage key")->s;
  expect(p[3], Kind::Str, "a storage location");  // "cpu", "cuda:0": all are read to the CPU
  const int64_t numel = expect(p[4], Kind::Int, "a storage size")->i;
  if (numel < 0) fail(op_at_, fmt::format("storage '{}' has a negative size", key));
  const auto [it, added] = storages.insert({key, StorageInfo{type->second, numel}});
  if (!added && (it->second.dtype != type->second || it->second.numel != numel))
    fail(op_at_, fmt::format("storage '{}' is declared twice, differently", key));
  Obj* s = make(Kind::Storage);
  s->s = key;
  s->dtype = type->second;
  s->n = numel;
  if (p.size() == 6 && p[5]->kind != Kind::None) {
    const std::vector<Obj*>& v = expect(p[5], Kind::Tuple, "a storage view")->items;
    if (v.size() != 3 || v[1]->kind != Kind::Int || v[2]->kind != Kind::Int)
      fail(op_at_, "a malformed storage view");
    s->i = v[1]->i;
    s->n = v[2]->i;
    if (s->i < 0 || s->n < 0 || s->i > numel || s->n > numel - s->i)
      fail(op_at_, fmt::format("a view [{}, +{}) of storage '{}' of {} elements", s->i, s->n, key, numel));
  }
  return s;
}

// The dict's tensors by name. A repeated key replaces the value in place, as in Python.
StateDict extract(Machine& m, Obj* root, size_t at) {
  if (root->kind != Kind::Dict)
    m.fail(at, fmt::format("the file holds a {}, not a state dict (a dict of tensors)", kind_name(root->kind)));
  StateDict out;
  std::map<std::string, size_t> index;
  for (size_t k = 0; k + 1 < root->items.size(); k += 2) {
    const Obj* key = root->items[k];
    const Obj* value = root->items[k + 1];
    if (key->kind != Kind::Str || value->kind != Kind::Tensor) continue;
    TensorInfo t = m.tensors[value->tensor];
    t.name = key->s;
    const auto [it, added] = index.insert({t.name, out.tensors.size()});
    if (added) out.tensors.push_back(std::move(t));
    else out.tensors[it->second] = std::move(t);
  }
  for (const TensorInfo& t : out.tensors) out.storages[t.storage] = m.storages.at(t.storage);
  return out;
}

// The first pickle of a legacy file: LONG1 0x1950a86a20f9469cfc6c, protocol 2.
const std::string_view kLegacyMagic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 15);
constexpr int64_t kLegacyProtocol = 1001;

void check_sys_info(Machine& m, Obj* info, size_t at) {
  if (info->kind != Kind::Dict) m.fail(at, "sys_info is not a dict");
  for (size_t k = 0; k + 1 < info->items.size(); k += 2)
    if (info->items[k]->kind == Kind::Str && info->items[k]->s == "little_endian" &&
        info->items[k + 1]->kind == Kind::Bool && info->items[k + 1]->i == 0)
      m.fail(at, "a big-endian file");
}

}  // namespace

StateDict parse_state_dict(std::string_view pickle, const std::string& where) {
  Machine m(pickle, 0, where.empty() ? "" : where + " ");
  Obj* root = m.run();
  return extract(m, root, 0);
}

bool is_legacy(std::string_view head) {
  const size_t n = std::min(head.size(), kLegacyMagic.size());
  return n > 0 && head.substr(0, n) == kLegacyMagic.substr(0, n);
}

namespace {

[[noreturn]] void fail_at(size_t at, const std::string& msg) { throw std::runtime_error(fmt::format("byte {}: {}", at, msg)); }

// After the pickles, from byte `pos`: each listed storage as an int64 element count (which
// must be the pickle's) and its bytes. Records where each storage's bytes start.
std::map<std::string, size_t> locate_storages(std::string_view file, size_t pos, const Obj* keys, size_t keys_at,
                                              const std::map<std::string, StorageInfo>& storages) {
  if (keys->kind != Kind::List) fail_at(keys_at, "the storage key list is not a list");
  std::map<std::string, size_t> data;
  for (const Obj* key : keys->items) {
    if (key->kind != Kind::Str) fail_at(keys_at, "a storage key is not a string");
    const auto st = storages.find(key->s);
    if (st == storages.end()) fail_at(keys_at, fmt::format("storage '{}' is listed but no tensor uses it", key->s));
    if (file.size() - pos < 8) fail_at(pos, fmt::format("truncated: storage '{}' is missing", key->s));
    int64_t count = 0, bytes = 0;
    std::memcpy(&count, file.data() + pos, 8);  // little-endian (sys_info checked)
    if (count != st->second.numel)
      fail_at(pos, fmt::format("storage '{}' holds {} elements, its tensors' pickle says {}", key->s, count,
                               st->second.numel));
    const int64_t element = element_size(st->second.dtype);
    if (!checked_mul(count, element, bytes) || static_cast<uint64_t>(bytes) > file.size() - pos - 8)
      fail_at(pos, fmt::format("truncated: storage '{}' needs {} x {} bytes, {} left", key->s, count, element,
                               file.size() - pos - 8));
    if (!data.insert({key->s, pos + 8}).second) fail_at(pos, fmt::format("storage '{}' is listed twice", key->s));
    pos += 8 + static_cast<size_t>(bytes);
  }
  return data;
}

}  // namespace

Legacy parse_legacy(std::string_view file) {
  if (!is_legacy(file)) fail_at(0, "neither a zip archive nor a legacy torch.save file (no magic number)");
  if (file.size() < kLegacyMagic.size()) fail_at(file.size(), "truncated in the magic number");
  Machine version(file, kLegacyMagic.size(), "");
  const Obj* v = version.run();
  if (v->kind != Kind::Int || v->i != kLegacyProtocol)
    fail_at(kLegacyMagic.size(), fmt::format("unknown legacy protocol version (expected {})", kLegacyProtocol));
  Machine sys_info(file, version.pos(), "");
  check_sys_info(sys_info, sys_info.run(), version.pos());
  Machine main(file, sys_info.pos(), "");
  Legacy out;
  out.dict = extract(main, main.run(), sys_info.pos());
  Machine keys(file, main.pos(), "");
  const Obj* list = keys.run();
  out.data = locate_storages(file, keys.pos(), list, main.pos(), main.storages);
  for (const auto& [key, info] : out.dict.storages)
    if (out.data.count(key) == 0) fail_at(main.pos(), fmt::format("storage '{}' has no data in the file", key));
  return out;
}

}  // namespace pipeline::torchpk
