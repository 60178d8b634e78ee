// Memory mappings handed to JavaScript: mmap(2), munmap(2), madvise(2), and
// memory probes that turn SIGBUS/SIGSEGV into values (sigaction(2),
// sigsetjmp(3)), as the kernel selftests' TEST_EXPECT_SIGBUS does.
// A mapping is a handle (an External) plus views: external ArrayBuffers over
// parts of it, none longer than Node's largest external buffer (2^32 bytes
// on Node 20), so a memslot's memory may be as large as the kernel allows.
// munmap() detaches the views it is given before unmapping, so a stale view
// reads as length 0 instead of touching unmapped memory; the handle and the
// views hold references, and the last one to be finalized unmaps what was
// never unmapped explicitly.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>

#include <unistd.h>

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "addon.h"

namespace kvmgmem {

constexpr long kGuestMemfdMagic = 0x474d454d;  // its own pseudo fs (include/uapi/linux/magic.h, 7.x)
constexpr long kAnonInodeMagic = 0x09041934;   // before that, an anonymous inode

// Whether `fd` is a guest_memfd: a file of the guest_memfd fs, or (older
// kernels) the anonymous inode named "[kvm-gmem]".
static bool IsGuestMemfd(int fd, long fsType) {
  if (fsType == kGuestMemfdMagic) return true;
  if (fsType != kAnonInodeMagic) return false;
  char path[64], target[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n < 0) return false;
  target[n] = 0;
  return std::strcmp(target, "anon_inode:[kvm-gmem]") == 0;
}
constexpr uint64_t kGmemFlagMmap = 1, kGmemFlagInitShared = 2;

constexpr int kReserveFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

// Gives a child's range back to its reservation: PROT_NONE in place (an
// atomic replacement), so the address range never becomes free while the
// reservation owns it.
static int Rereserve(Mapping* m) { return mmap(m->addr, m->length, PROT_NONE, kReserveFlags | MAP_FIXED, -1, 0) == MAP_FAILED ? errno : 0; }

static void Unlink(Mapping* child) {
  auto& c = child->parent->children;
  for (auto it = c.begin(); it != c.end(); ++it) {
    if (*it == child) {
      c.erase(it);
      return;
    }
  }
}

static void Drop(Mapping* m) {
  if (m->parent != nullptr) {
    Mapping* parent = m->parent;
    if (!m->unmapped) Rereserve(m);
    Unlink(m);
    delete m;
    UnrefMapping(parent);
    return;
  }
  if (m->owner != nullptr) {
    auto it = m->owner->mappings.find(m->addr);
    if (it != m->owner->mappings.end() && it->second == m) m->owner->mappings.erase(it);
    m->owner = nullptr;
  }
  if (!m->unmapped) munmap(m->addr, m->length);
  m->unmapped = true;
  delete m;
}

void UnrefMapping(Mapping* m) {
  if (--m->refs == 0 && m->pins == 0) Drop(m);
}

void PinMapping(Mapping* m) { m->pins++; }

void UnpinMapping(Mapping* m) {
  if (--m->pins == 0 && m->refs == 0) Drop(m);
}

Mapping* FindMapping(Napi::Env env, void* p) {
  auto& maps = Data(env).mappings;
  auto it = maps.find(p);
  return it == maps.end() || it->second->unmapped ? nullptr : it->second;
}

static void FinalizeHandle(Napi::Env, Mapping* m) { UnrefMapping(m); }

static void FinalizeView(napi_env, void*, void* hint) { UnrefMapping(static_cast<Mapping*>(hint)); }

// An external ArrayBuffer over [offset, offset + length) of `m`. The caller
// has checked the range and that length <= maxView: Node 20 refuses a longer
// one only after calling the finalizer, which would free a live record.
static napi_value NewView(napi_env env, Mapping* m, size_t offset, size_t length) {
  napi_value ab = nullptr;
  m->refs++;
  if (napi_create_external_arraybuffer(env, static_cast<char*>(m->addr) + offset, length, FinalizeView, m, &ab) != napi_ok) {
    m->refs--;
    return nullptr;
  }
  return ab;
}

// Refuses a mapping whose first touch past the end of its file, or of a
// guest_memfd page that is not shared, would raise SIGBUS and kill the
// process. Only regular files are checked (a vCPU's kvm_run is an anonymous
// inode with size 0); a file that shrinks after mmap() can still do it.
static void CheckFileMapping(Napi::Env env, int fd, uint64_t length, uint64_t offset) {
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowErrno(env, errno, "fstat");
  if (!S_ISREG(st.st_mode)) return;
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (offset > size || length > size - offset) {
    throw ArgRangeError(env, "mmap: [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                                 ") extends past the end of the file (size " + std::to_string(size) +
                                 "): touching those pages would raise SIGBUS");
  }
  struct statfs fs;
  if (fstatfs(fd, &fs) < 0) ThrowErrno(env, errno, "fstatfs");
  if (!IsGuestMemfd(fd, static_cast<long>(fs.f_type))) return;
  auto& flags = Data(env).gmemFlags;
  auto it = flags.find(fd);
  if (it == flags.end())
    throw ArgError(env,
                   "mmap: fd " + std::to_string(fd) +
                       " is a guest_memfd this process did not create here: its create flags are unknown, and without init-shared every "
                       "access raises SIGBUS",
                   kArgValue);
  // Without 'mmap' the kernel refuses the mapping itself (ENODEV); with
  // 'mmap' but not 'init-shared' it maps it, and the first touch is SIGBUS.
  if ((it->second & kGmemFlagMmap) && !(it->second & kGmemFlagInitShared))
    throw ArgError(env,
                   "mmap: guest_memfd fd " + std::to_string(fd) +
                       " was created with 'mmap' but without 'init-shared': its pages start private and touching the mapping raises SIGBUS",
                   kArgValue);
}

// The JavaScript side of a new record: { handle, address, buffer }, where
// `buffer` views [0, min(length, maxView)). The handle holds one ref.
static Napi::Value Handed(Napi::Env env, Mapping* m) {
  m->refs++;  // the handle's; released by its finalizer
  Napi::External<Mapping> handle;
  try {
    handle = Napi::External<Mapping>::New(env, m, FinalizeHandle);
  } catch (...) {
    UnrefMapping(m);
    throw;
  }
  size_t max = Data(env).maxView;
  napi_value ab = NewView(env, m, 0, m->length < max ? m->length : max);
  if (ab == nullptr) throw CodedError(env, "mmap: could not create the view", "ERR_KVM_INTERNAL");
  Napi::Object o = Napi::Object::New(env);
  o.Set("handle", handle);
  o.Set("buffer", Napi::Value(env, ab));
  o.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m->addr))));
  return o;
}

// mmap(fd | -1, length, prot, flags, offset, checkFile) -> { handle, address, buffer }
// `buffer` views [0, min(length, maxView)).
static Napi::Value Mmap(const Napi::CallbackInfo& info) {
  const char* fn = "mmap";
  ExpectArgs(info, 6, fn);
  Napi::Env env = info.Env();
  int fd = -1;
  if (!(info[0].IsNumber() && info[0].As<Napi::Number>().Int32Value() == -1 && info[0].As<Napi::Number>().DoubleValue() == -1))
    fd = FdArg(info, 0, fn, "fd");
  uint64_t length = U64Arg(info, 1, fn, "length");
  uint32_t prot = U32Arg(info, 2, fn, "prot");
  uint32_t flags = U32Arg(info, 3, fn, "flags");
  uint64_t offset = U64Arg(info, 4, fn, "offset");
  bool check = info[5].ToBoolean();
  if (flags & MAP_FIXED) throw ArgError(env, "mmap: MAP_FIXED is not allowed (it could replace live memory)", kArgValue);
  if (fd >= 0 && check) CheckFileMapping(env, fd, length, offset);
  void* p = mmap(nullptr, length, static_cast<int>(prot), static_cast<int>(flags), fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  auto* m = new Mapping{p, static_cast<size_t>(length), false, 0, 0, &Data(env)};
  Data(env).mappings[p] = m;
  return Handed(env, m);
}

// reserve(length) -> { handle, address, buffer }: PROT_NONE address space
// for mmapFixed() to place mappings in (touching it is SIGSEGV).
static Napi::Value Reserve(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "reserve");
  Napi::Env env = info.Env();
  uint64_t length = U64Arg(info, 0, "reserve", "length");
  void* p = mmap(nullptr, length, PROT_NONE, kReserveFlags, -1, 0);
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  auto* m = new Mapping{p, static_cast<size_t>(length), false, 0, 0, &Data(env)};
  m->reservation = true;
  Data(env).mappings[p] = m;
  return Handed(env, m);
}

static Mapping* HandleArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (!info[i].IsExternal()) throw ArgError(info.Env(), std::string(fn) + ": expected a mapping handle");
  Mapping* m = info[i].As<Napi::External<Mapping>>().Data();
  if (m == nullptr || m->unmapped || m->owner != &Data(info.Env()))
    throw ArgError(info.Env(), std::string(fn) + ": the mapping is not live", kArgValue);
  return m;
}

static void CheckRange(const Napi::CallbackInfo& info, Mapping* m, uint64_t offset, uint64_t length, const char* fn) {
  if (offset > m->length || length > m->length - offset) throw ArgRangeError(info.Env(), std::string(fn) + ": range outside the mapping");
}

// mmapFixed(reservation, at, length, prot, flags, fd | -1, offset) -> a
// MAP_FIXED mapping at reservation + at (GM-16's placement at a chosen,
// e.g. PMD-aligned, address). Only inside a reservation of this package and
// over none of its live children: MAP_FIXED elsewhere could replace memory
// that V8, the heap or a memslot uses. A refused mmap leaves the range
// reserved (the kernel may have unmapped it before failing).
static Napi::Value MmapFixed(const Napi::CallbackInfo& info) {
  const char* fn = "mmapFixed";
  ExpectArgs(info, 7, fn);
  Napi::Env env = info.Env();
  Mapping* parent = HandleArg(info, 0, fn);
  uint64_t at = U64Arg(info, 1, fn, "at");
  uint64_t length = U64Arg(info, 2, fn, "length");
  uint32_t prot = U32Arg(info, 3, fn, "prot");
  uint32_t flags = U32Arg(info, 4, fn, "flags");
  int fd = -1;
  if (!(info[5].IsNumber() && info[5].As<Napi::Number>().DoubleValue() == -1)) fd = FdArg(info, 5, fn, "fd");
  uint64_t offset = U64Arg(info, 6, fn, "offset");
  if (!parent->reservation) throw ArgError(env, std::string(fn) + ": the mapping is not a reservation (Mapping.reserve())", kArgValue);
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (at % page != 0 || length == 0 || length % page != 0)
    throw ArgRangeError(env, std::string(fn) + ": at and length must be whole pages, length > 0");
  CheckRange(info, parent, at, length, fn);
  char* addr = static_cast<char*>(parent->addr) + at;
  for (Mapping* c : parent->children) {
    char* lo = static_cast<char*>(c->addr);
    if (addr < lo + c->length && lo < addr + length)
      throw ArgError(env, std::string(fn) + ": the range overlaps a live fixed mapping of this reservation", kArgValue);
  }
  void* p = mmap(addr, length, static_cast<int>(prot), static_cast<int>(flags | MAP_FIXED), fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    int e = errno;
    mmap(addr, length, PROT_NONE, kReserveFlags | MAP_FIXED, -1, 0);
    ThrowErrno(env, e, "mmap");
  }
  auto* m = new Mapping{p, static_cast<size_t>(length), false, 0, 0, &Data(env)};
  m->parent = parent;
  parent->refs++;  // the child's; released when the child record is freed
  parent->children.push_back(m);
  return Handed(env, m);
}

// mappingView(handle, offset, length) -> ArrayBuffer over that range.
static Napi::Value MappingView(const Napi::CallbackInfo& info) {
  const char* fn = "mappingView";
  ExpectArgs(info, 3, fn);
  Mapping* m = HandleArg(info, 0, fn);
  uint64_t offset = U64Arg(info, 1, fn, "offset");
  uint64_t length = U64Arg(info, 2, fn, "length");
  CheckRange(info, m, offset, length, fn);
  size_t max = Data(info.Env()).maxView;
  if (length > max)
    throw ArgRangeError(info.Env(),
                        std::string(fn) + ": a view is at most " + std::to_string(max) + " bytes (buffer.constants.MAX_LENGTH)");
  napi_value ab = NewView(info.Env(), m, offset, length);
  if (ab == nullptr) throw CodedError(info.Env(), "mappingView: could not create the view", "ERR_KVM_INTERNAL");
  return Napi::Value(info.Env(), ab);
}

// munmap(handle, views[]): detaches every view given (the ones JavaScript
// made of this mapping), then unmaps. Refused while a runner thread uses
// the mapping (a vCPU's kvm_run during run()).
static void Munmap(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "munmap");
  Mapping* m = HandleArg(info, 0, "munmap");
  if (!info[1].IsArray()) throw ArgError(info.Env(), "munmap: expected the mapping's views as an array");
  if (m->pins > 0) throw ArgError(info.Env(), "munmap: a vCPU runner thread is using this mapping", kArgValue);
  if (!m->children.empty())
    throw ArgError(info.Env(), "munmap: " + std::to_string(m->children.size()) + " fixed mapping(s) live inside this reservation",
                   kArgValue);
  Napi::Array views = info[1].As<Napi::Array>();
  char* lo = static_cast<char*>(m->addr);
  for (uint32_t i = 0; i < views.Length(); i++) {
    Napi::Value v = views[i];
    if (!v.IsArrayBuffer()) continue;
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    char* p = static_cast<char*>(ab.Data());
    // Only buffers over this mapping: detaching anything else is not ours to do.
    if (p != nullptr && p >= lo && p + ab.ByteLength() <= lo + m->length) ab.Detach();
  }
  if (m->owner != nullptr) m->owner->mappings.erase(m->addr);
  m->owner = nullptr;
  m->unmapped = true;
  if (m->parent != nullptr) {
    Unlink(m);  // the record stays the parent's ref until it is freed
    if (int e = Rereserve(m)) ThrowErrno(info.Env(), e, "mmap");
    return;
  }
  if (munmap(m->addr, m->length) < 0) ThrowErrno(info.Env(), errno, "munmap");
}

// madvise(handle, offset, length, advice), e.g. MADV_REMOVE to drop the
// shared copy of a page that became private.
static void Madvise(const Napi::CallbackInfo& info) {
  const char* fn = "madvise";
  ExpectArgs(info, 4, fn);
  Mapping* m = HandleArg(info, 0, fn);
  uint64_t offset = U64Arg(info, 1, fn, "offset");
  uint64_t length = U64Arg(info, 2, fn, "length");
  uint32_t advice = U32Arg(info, 3, fn, "advice");
  CheckRange(info, m, offset, length, fn);
  if (madvise(static_cast<char*>(m->addr) + offset, length, static_cast<int>(advice)) < 0) ThrowErrno(info.Env(), errno, "madvise");
}

// ---- probes: touch memory, and get a fault back as a value --------------
//
// While a probe runs, SIGBUS and SIGSEGV go to ProbeHandler. A fault of the
// probing thread inside the probed range jumps back (siglongjmp) and the
// probe reports the signal and the address; any other fault (another thread,
// e.g. V8's WebAssembly trap handler) is passed to the handler that was
// installed before, as if ours were not there. One probe at a time in the
// process (the handlers are process-wide); the previous handlers are back
// when the probe returns. The handler calls only async-signal-safe code
// (pthread_self, pthread_equal, siglongjmp), never JavaScript.
namespace {

struct ProbeState {
  sigjmp_buf env;
  uintptr_t lo = 0, hi = 0;
  int sig = 0;
  uintptr_t addr = 0;
};

std::mutex gProbeMutex;
std::atomic<ProbeState*> gProbe{nullptr};
pthread_t gProbeThread;
struct sigaction gOldBus, gOldSegv;

void Chain(int sig, siginfo_t* si, void* uc) {
  struct sigaction* old = sig == SIGBUS ? &gOldBus : &gOldSegv;
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction != nullptr) old->sa_sigaction(sig, si, uc);
    return;
  }
  if (old->sa_handler == SIG_IGN) return;
  if (old->sa_handler == SIG_DFL) {
    // Returning re-runs the faulting instruction, which then takes the
    // default action (the process dies as it would have without the probe).
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, nullptr);
    return;
  }
  old->sa_handler(sig);
}

void ProbeHandler(int sig, siginfo_t* si, void* uc) {
  ProbeState* p = gProbe.load(std::memory_order_acquire);
  uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  if (p != nullptr && pthread_equal(pthread_self(), gProbeThread) && a >= p->lo && a < p->hi) {
    p->sig = sig;
    p->addr = a;
    siglongjmp(p->env, 1);
  }
  Chain(sig, si, uc);
}

struct ProbeResult {
  int sig;         // 0, SIGBUS or SIGSEGV
  uintptr_t addr;  // the faulting address
  size_t done;     // bytes read or written before the fault
};

// Reads (write == false; into `copy` when given) or writes `byte` to every
// byte of [addr, addr + len) in order; stops at the first fault. Not
// instrumented by the sanitizers: touching memory that may fault (the null
// page, PROT_NONE) is the point, and the handler turns it into a value.
__attribute__((no_sanitize("address", "undefined"))) ProbeResult Probe(char* addr, size_t len, bool write, uint8_t byte, uint8_t* copy) {
  std::lock_guard<std::mutex> lock(gProbeMutex);
  ProbeState st;
  st.lo = reinterpret_cast<uintptr_t>(addr);
  st.hi = st.lo + len;
  volatile size_t done = 0;
  struct sigaction sa {};
  sa.sa_sigaction = ProbeHandler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  gProbeThread = pthread_self();
  sigaction(SIGBUS, &sa, &gOldBus);
  sigaction(SIGSEGV, &sa, &gOldSegv);
  gProbe.store(&st, std::memory_order_release);
  ProbeResult r{0, 0, 0};
  if (sigsetjmp(st.env, 1) == 0) {
    volatile char* p = addr;
    for (size_t i = 0; i < len; i++) {
      if (write)
        p[i] = static_cast<char>(byte);
      else if (copy != nullptr)
        copy[i] = static_cast<uint8_t>(p[i]);
      else
        (void)p[i];
      done = i + 1;
    }
  } else {
    r.sig = st.sig;
    r.addr = st.addr;
  }
  r.done = done;
  gProbe.store(nullptr, std::memory_order_release);
  sigaction(SIGBUS, &gOldBus, nullptr);
  sigaction(SIGSEGV, &gOldSegv, nullptr);
  return r;
}

// Probes and returns { result, address, done, data }: data holds the bytes
// read before any fault (reads only; null for writes).
Napi::Value RunProbe(Napi::Env env, char* addr, uint64_t length, bool write, uint8_t byte) {
  Napi::Value data = env.Null();
  uint8_t* copy = nullptr;
  if (!write) {
    if (length > Data(env).maxView)
      throw ArgRangeError(env, "probe: a read probe copies what it reads: at most " + std::to_string(Data(env).maxView) + " bytes");
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, static_cast<size_t>(length));
    copy = static_cast<uint8_t*>(ab.Data());
    data = ab;
  }
  ProbeResult r = Probe(addr, static_cast<size_t>(length), write, byte, copy);
  Napi::Object o = Napi::Object::New(env);
  o.Set("data", data);
  o.Set("result", Napi::String::New(env, r.sig == 0 ? "ok" : r.sig == SIGBUS ? "SIGBUS" : "SIGSEGV"));
  o.Set("address", r.sig == 0 ? env.Null() : Napi::Value(Napi::BigInt::New(env, static_cast<uint64_t>(r.addr))));
  o.Set("done", Napi::Number::New(env, static_cast<double>(r.done)));
  return o;
}

bool WriteArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (!info[i].IsBoolean()) throw ArgError(info.Env(), std::string(fn) + ": write must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

}  // namespace

// probeMapping(handle, offset, length, write, byte) -> { result, address, done }
static Napi::Value ProbeMapping(const Napi::CallbackInfo& info) {
  const char* fn = "probeMapping";
  ExpectArgs(info, 5, fn);
  Mapping* m = HandleArg(info, 0, fn);
  uint64_t offset = U64Arg(info, 1, fn, "offset");
  uint64_t length = U64Arg(info, 2, fn, "length");
  bool write = WriteArg(info, 3, fn);
  uint32_t byte = U32Arg(info, 4, fn, "byte");
  if (byte > 255) throw ArgRangeError(info.Env(), std::string(fn) + ": byte must be 0..255");
  CheckRange(info, m, offset, length, fn);
  // A runner thread's kvm_run page, or a view being detached, is not ours to scribble on.
  if (write && m->pins > 0) throw ArgError(info.Env(), std::string(fn) + ": a vCPU runner thread is using this mapping", kArgValue);
  return RunProbe(info.Env(), static_cast<char*>(m->addr) + offset, length, write, static_cast<uint8_t>(byte));
}

// probeAddress(address, length, write, byte): the same on any address (the
// raw layer: a write can corrupt the process's own memory).
static Napi::Value ProbeAddress(const Napi::CallbackInfo& info) {
  const char* fn = "probeAddress";
  ExpectArgs(info, 4, fn);
  uint64_t address = U64Arg(info, 0, fn, "address");
  uint64_t length = U64Arg(info, 1, fn, "length");
  bool write = WriteArg(info, 2, fn);
  uint32_t byte = U32Arg(info, 3, fn, "byte");
  if (byte > 255) throw ArgRangeError(info.Env(), std::string(fn) + ": byte must be 0..255");
  if (length > UINTPTR_MAX - address) throw ArgRangeError(info.Env(), std::string(fn) + ": address + length wraps");
  return RunProbe(info.Env(), reinterpret_cast<char*>(static_cast<uintptr_t>(address)), length, write, static_cast<uint8_t>(byte));
}

// ---- NUMA memory policy: mbind(2), get_mempolicy(2), set_mempolicy(2),
// move_pages(2) (query form). Called by number: the system headers carry no
// libnuma. A node mask is passed as an array of node numbers.
namespace {

constexpr unsigned long kMaxNode = 1024;  // bits in the masks passed to the kernel
constexpr size_t kMaskWords = kMaxNode / (8 * sizeof(unsigned long));

void NodeMask(const Napi::CallbackInfo& info, size_t i, const char* fn, unsigned long (&mask)[kMaskWords]) {
  std::memset(mask, 0, sizeof mask);
  if (!info[i].IsArray()) throw ArgError(info.Env(), std::string(fn) + ": nodes must be an array of node numbers");
  Napi::Array nodes = info[i].As<Napi::Array>();
  uint32_t n = nodes.Length();
  if (n > kMaxNode) throw ArgRangeError(info.Env(), std::string(fn) + ": at most " + std::to_string(kMaxNode) + " nodes");
  for (uint32_t k = 0; k < n; k++) {
    Napi::Value v = nodes[k];
    if (!v.IsNumber()) throw ArgError(info.Env(), std::string(fn) + ": nodes must be an array of node numbers");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d < kMaxNode) || d != static_cast<double>(static_cast<uint32_t>(d)))
      throw ArgRangeError(info.Env(), std::string(fn) + ": a node number must be an integer 0.." + std::to_string(kMaxNode - 1));
    auto node = static_cast<uint32_t>(d);
    mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
  }
}

Napi::Array MaskNodes(Napi::Env env, const unsigned long (&mask)[kMaskWords]) {
  Napi::Array out = Napi::Array::New(env);
  uint32_t k = 0;
  for (uint32_t node = 0; node < kMaxNode; node++)
    if (mask[node / (8 * sizeof(unsigned long))] & (1UL << (node % (8 * sizeof(unsigned long)))))
      out.Set(k++, Napi::Number::New(env, node));
  return out;
}

}  // namespace

// mbind(handle, offset, length, mode, nodes, flags)
static void Mbind(const Napi::CallbackInfo& info) {
  const char* fn = "mbind";
  ExpectArgs(info, 6, fn);
  Mapping* m = HandleArg(info, 0, fn);
  uint64_t offset = U64Arg(info, 1, fn, "offset");
  uint64_t length = U64Arg(info, 2, fn, "length");
  uint32_t mode = U32Arg(info, 3, fn, "mode");
  unsigned long mask[kMaskWords];
  NodeMask(info, 4, fn, mask);
  uint32_t flags = U32Arg(info, 5, fn, "flags");
  CheckRange(info, m, offset, length, fn);
  if (syscall(SYS_mbind, static_cast<char*>(m->addr) + offset, length, mode, mask, kMaxNode, flags) < 0)
    ThrowErrno(info.Env(), errno, "mbind");
}

// getMempolicy(handle | null, offset, flags) -> { mode, nodes }: with a
// mapping, the policy at that address (MPOL_F_ADDR is added); without, the
// calling thread's.
static Napi::Value GetMempolicy(const Napi::CallbackInfo& info) {
  const char* fn = "getMempolicy";
  ExpectArgs(info, 3, fn);
  void* addr = nullptr;
  uint32_t flags = 0;
  if (!info[0].IsNull()) {
    Mapping* m = HandleArg(info, 0, fn);
    uint64_t offset = U64Arg(info, 1, fn, "offset");
    CheckRange(info, m, offset, 1, fn);
    addr = static_cast<char*>(m->addr) + offset;
    flags = 2;  // MPOL_F_ADDR
  }
  flags |= U32Arg(info, 2, fn, "flags");
  int mode = 0;
  unsigned long mask[kMaskWords] = {};
  if (syscall(SYS_get_mempolicy, &mode, mask, kMaxNode, addr, flags) < 0) ThrowErrno(info.Env(), errno, "get_mempolicy");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("mode", Napi::Number::New(info.Env(), mode));
  o.Set("nodes", MaskNodes(info.Env(), mask));
  return o;
}

// setMempolicy(mode, nodes): the calling thread's policy.
static void SetMempolicy(const Napi::CallbackInfo& info) {
  const char* fn = "setMempolicy";
  ExpectArgs(info, 2, fn);
  uint32_t mode = U32Arg(info, 0, fn, "mode");
  unsigned long mask[kMaskWords];
  NodeMask(info, 1, fn, mask);
  if (syscall(SYS_set_mempolicy, mode, mask, kMaxNode) < 0) ThrowErrno(info.Env(), errno, "set_mempolicy");
}

// movePages(handle, offset, pages) -> status per page (the node, or
// -errno: -ENOENT for a page not present), without moving anything.
static Napi::Value MovePages(const Napi::CallbackInfo& info) {
  const char* fn = "movePages";
  ExpectArgs(info, 3, fn);
  Mapping* m = HandleArg(info, 0, fn);
  uint64_t offset = U64Arg(info, 1, fn, "offset");
  uint32_t pages = U32Arg(info, 2, fn, "pages");
  long ps = sysconf(_SC_PAGESIZE);
  if (pages > 65536) throw ArgRangeError(info.Env(), std::string(fn) + ": at most 65536 pages");
  CheckRange(info, m, offset, static_cast<uint64_t>(pages) * static_cast<uint64_t>(ps), fn);
  std::vector<void*> addrs(pages);
  std::vector<int> status(pages, 0);
  for (uint32_t k = 0; k < pages; k++)
    addrs[k] = static_cast<char*>(m->addr) + offset + static_cast<uint64_t>(k) * static_cast<uint64_t>(ps);
  if (syscall(SYS_move_pages, 0, static_cast<unsigned long>(pages), addrs.data(), nullptr, status.data(), 0) < 0)
    ThrowErrno(info.Env(), errno, "move_pages");
  Napi::Array out = Napi::Array::New(info.Env(), pages);
  for (uint32_t k = 0; k < pages; k++) out.Set(k, Napi::Number::New(info.Env(), status[k]));
  return out;
}

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mbind", Napi::Function::New(env, Mbind, "mbind"));
  exports.Set("getMempolicy", Napi::Function::New(env, GetMempolicy, "getMempolicy"));
  exports.Set("setMempolicy", Napi::Function::New(env, SetMempolicy, "setMempolicy"));
  exports.Set("movePages", Napi::Function::New(env, MovePages, "movePages"));
  exports.Set("probeMapping", Napi::Function::New(env, ProbeMapping, "probeMapping"));
  exports.Set("probeAddress", Napi::Function::New(env, ProbeAddress, "probeAddress"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("reserve", Napi::Function::New(env, Reserve, "reserve"));
  exports.Set("mmapFixed", Napi::Function::New(env, MmapFixed, "mmapFixed"));
  exports.Set("mappingView", Napi::Function::New(env, MappingView, "mappingView"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
}

}  // namespace kvmgmem
