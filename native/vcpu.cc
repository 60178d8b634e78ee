// A KVM vCPU fd: KVM_CREATE_VCPU, KVM_RUN, KVM_GET/SET_REGS,
// KVM_GET/SET_SREGS, KVM_SET_CPUID2 and KVM_PRE_FAULT_MEMORY
// (Documentation/virt/kvm/api.rst 4.7, 4.10-4.14, 4.73, 4.143).
//
// KVM_RUN runs either on the calling thread (runSync) or on a thread owned
// by the vCPU (runner*), so the event loop keeps turning while the guest
// runs. One thread per vCPU, not the libuv pool: KVM calls synchronize_rcu()
// whenever a different thread runs a vCPU, which would cost milliseconds.
//
// Kicking a vCPU out of the guest follows QEMU: a signal (SIG_KICK, no
// SA_RESTART) is sent to the thread in KVM_RUN and its handler sets
// kvm_run->immediate_exit, so a kick that lands just before the ioctl is not
// lost: KVM_RUN returns EINTR at once.
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "addon.h"
#include "uapi.h"

namespace kvmgmem {

static int SigKick() { return SIGRTMIN + 4; }

// The kvm_run page each thread is running, for the kick signal's handler:
// a fixed table searched by thread id. Not a thread_local: its first access
// in a thread (and any access after a later dlopen) may call malloc, and a
// kick landing while the new runner thread was inside malloc deadlocked it
// on the malloc lock (found by the fuzz campaign). gettid() and atomics are
// async-signal-safe. A thread registers only while it may be kicked.
constexpr int kKickSlots = 4096;
struct KickSlot {
  std::atomic<pid_t> tid{0};
  std::atomic<kvm_run*> run{nullptr};
};
static KickSlot kickSlots[kKickSlots];

static pid_t Gettid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

// Returns the slot taken, or -1 when all are (the run then loses only a
// kick that lands just before KVM_RUN starts).
static int RegisterKickable(pid_t tid, kvm_run* run) {
  for (int i = 0; i < kKickSlots; i++) {
    pid_t expected = 0;
    if (kickSlots[i].tid.load(std::memory_order_relaxed) == 0 && kickSlots[i].tid.compare_exchange_strong(expected, -1)) {
      kickSlots[i].run.store(run);
      kickSlots[i].tid.store(tid);
      return i;
    }
  }
  return -1;
}

static void UnregisterKickable(int slot) {
  if (slot < 0) return;
  kickSlots[slot].tid.store(-1);
  kickSlots[slot].run.store(nullptr);
  kickSlots[slot].tid.store(0);
}

static void OnKick(int) {
  int saved = errno;
  pid_t tid = Gettid();
  for (int i = 0; i < kKickSlots; i++) {
    if (kickSlots[i].tid.load() != tid) continue;
    kvm_run* r = kickSlots[i].run.load();
    if (r != nullptr) __atomic_store_n(&r->immediate_exit, 1, __ATOMIC_SEQ_CST);
    break;
  }
  errno = saved;
}

static void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = OnKick;  // no SA_RESTART: KVM_RUN must return EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(SigKick(), &sa, nullptr);
  });
}

// ioctl(KVM_RUN) on `run`'s vCPU. Returns 0, or -errno for the two failures
// that are exits rather than errors: EINTR (exit_reason KVM_EXIT_INTR) and
// EFAULT/EHWPOISON with KVM_EXIT_MEMORY_FAULT. Any other failure: errno > 0
// in *err and the result is 1. `tid` >= 0: a kick may target this thread
// (id `tid`) during the run, so its handler must find `run`; -1: no kick can
// (runSync without a deadline: nothing to register on the hot path).
static int DoRun(int fd, kvm_run* run, int* err, pid_t tid) {
  int slot = tid >= 0 ? RegisterKickable(tid, run) : -1;
  int r = ioctl(fd, KVM_RUN, 0);
  int e = errno;  // before anything else can change it
  UnregisterKickable(slot);
  if (r == 0) return 0;
  if (e == EINTR) return -EINTR;
  if ((e == EFAULT || e == EHWPOISON) && run->exit_reason == KVM_EXIT_MEMORY_FAULT) return -e;
  *err = e;
  return 1;
}

// The kvm_run page: the first view of a live mapping of this environment
// (so a runner can pin it, and no other buffer is mistaken for it).
static Mapping* RunMappingArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (!info[i].IsArrayBuffer()) throw ArgError(info.Env(), std::string(fn) + ": expected the kvm_run ArrayBuffer");
  Napi::ArrayBuffer ab = info[i].As<Napi::ArrayBuffer>();
  Mapping* m = ab.Data() == nullptr ? nullptr : FindMapping(info.Env(), ab.Data());
  if (m == nullptr || ab.ByteLength() < sizeof(kvm_run) || m->length < sizeof(kvm_run))
    throw ArgError(info.Env(), std::string(fn) + ": the kvm_run mapping is unmapped, too small or not a mapping", kArgValue);
  return m;
}

static kvm_run* RunArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  return static_cast<kvm_run*>(RunMappingArg(info, i, fn)->addr);
}

// createVcpu(vmFd, id) -> vCPU fd (the kernel installs it O_CLOEXEC).
static Napi::Value CreateVcpu(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "createVcpu");
  int vm = FdArg(info, 0, "createVcpu", "vmFd");
  uint32_t id = U32Arg(info, 1, "createVcpu", "id");
  int fd = ioctl(vm, KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_CREATE_VCPU)");
  TrackFd(info.Env(), fd);
  return Napi::Number::New(info.Env(), fd);
}

// runSyncBind(vcpuFd, runBuffer) -> run([timeoutMs]) -> undefined | -EINTR | -ETIME | -EFAULT | -EHWPOISON.
// -ETIME: the run ended because its own deadline kicked it.
// The returned function carries the fd and the kvm_run address, so a call
// converts no arguments: every exit crosses this boundary, and after each
// KVM_RUN the host's branch predictors are cold (IBPB), which makes every
// Node-API call on the way back cost more than in a microbenchmark.
// timeoutMs > 0 arms a one-shot timer that kicks this thread.
// runSyncUnbind(fn) makes it throw from then on; the Vcpu calls it before
// the fd and the mapping go away. Plain Node-API: it is on every exit's path.
struct BoundRun {
  int fd;
  kvm_run* run;
  napi_ref buffer;  // keeps the kvm_run mapping alive while bound
};

static void ReleaseBoundRun(napi_env env, BoundRun* b) {
  if (b->buffer != nullptr) napi_delete_reference(env, b->buffer);
  b->buffer = nullptr;
  b->run = nullptr;
  b->fd = -1;
}

// A one-shot timer that fired reads back as disarmed (it_value 0).
static bool TimerExpired(timer_t timer) {
  itimerspec cur{};
  return timer_gettime(timer, &cur) == 0 && cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0;
}

static itimerspec Millis(int32_t ms) {
  itimerspec its{};
  its.it_value.tv_sec = ms / 1000;
  its.it_value.tv_nsec = (ms % 1000) * 1000000L;
  return its;
}

// A CLOCK_MONOTONIC timer that kicks the calling thread (SIG_KICK).
static int CreateKickTimer(timer_t* timer, pid_t tid) {
  sigevent sev;
  std::memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SigKick();
  sev._sigev_un._tid = tid;
  return timer_create(CLOCK_MONOTONIC, &sev, timer);
}

// KVM_RUN with `timer` (a kick timer of this thread) armed for `ms` > 0:
// -ETIME when the timer is what ended it. The timer is left as it is.
static int RunArmed(int fd, kvm_run* run, int* err, pid_t tid, timer_t timer, int32_t ms) {
  itimerspec its = Millis(ms);
  timer_settime(timer, 0, &its, nullptr);
  int r = DoRun(fd, run, err, tid);
  return r == -EINTR && TimerExpired(timer) ? -ETIME : r;
}

static int RunWithTimer(int fd, kvm_run* run, int32_t timeoutMs, int* err) {
  InstallKickHandler();
  pid_t tid = Gettid();
  timer_t timer{};
  if (CreateKickTimer(&timer, tid) < 0) {
    *err = errno;
    return 2;
  }
  int r = RunArmed(fd, run, err, tid, timer, timeoutMs);
  timer_delete(timer);
  // A kick that landed after KVM_RUN returned must not cut the next run short.
  __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
  return r;
}

static napi_value BoundRunSync(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value arg;
  void* data = nullptr;
  napi_get_cb_info(env, cbinfo, &argc, &arg, nullptr, &data);
  auto* b = static_cast<BoundRun*>(data);
  if (b->run == nullptr) {
    napi_throw_error(env, "ERR_KVM_CLOSED", "runSync: the vCPU was closed");
    return nullptr;
  }
  int32_t timeoutMs = 0;
  if (argc >= 1 && !RawSmallInt(env, arg, &timeoutMs)) {
    napi_throw_type_error(env, kArgValue, "runSync: timeoutMs must be an integer 0..2^31-1");
    return nullptr;
  }
  int err = 0;
  int r = timeoutMs > 0 ? RunWithTimer(b->fd, b->run, timeoutMs, &err) : DoRun(b->fd, b->run, &err, -1);
  if (r == 2) return ThrowErrnoRaw(env, err, "timer_create");
  if (r == 1) return ThrowErrnoRaw(env, err, "ioctl(KVM_RUN)");
  // undefined for a plain exit: no number to create on the common path.
  return r == 0 ? nullptr : RawInt32(env, r);
}

static Napi::Value RunSyncBind(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "runSyncBind");
  int fd = FdArg(info, 0, "runSyncBind", "vcpuFd");
  kvm_run* run = RunArg(info, 1, "runSyncBind");
  napi_env env = info.Env();
  auto* b = new BoundRun{fd, run, nullptr};
  napi_value fn;
  napi_create_function(env, "runSync", NAPI_AUTO_LENGTH, BoundRunSync, b, &fn);
  napi_create_reference(env, info[1], 1, &b->buffer);
  // The function owns the record: freed when the function is collected.
  napi_wrap(
      env, fn, b,
      [](napi_env e, void* p, void*) {
        auto* rec = static_cast<BoundRun*>(p);
        ReleaseBoundRun(e, rec);
        delete rec;
      },
      nullptr, nullptr);
  return Napi::Value(env, fn);
}

static void RunSyncUnbind(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "runSyncUnbind");
  void* p = nullptr;
  if (!info[0].IsFunction() || napi_unwrap(info.Env(), info[0], &p) != napi_ok || p == nullptr)
    throw ArgError(info.Env(), "runSyncUnbind: expected a function from runSyncBind");
  ReleaseBoundRun(info.Env(), static_cast<BoundRun*>(p));
}

// What a runner thread hands the JavaScript thread at the end of a run.
struct RunResult {
  int r;
  int err;
  uint64_t resumed;
};

// MMIO writes a run resumes on its own thread instead of returning: the
// exit is a write of `len` bytes inside [first, last]. Re-entering KVM_RUN
// completes the write (the data is dropped), as a VMM's vCPU thread does for
// an access it ignores; the guest then goes on without waiting for the
// JavaScript thread (memslot_perf_test's vCPU runs this way in C).
struct MmioResume {
  bool on = false;
  uint64_t first = 0;
  uint64_t last = 0;
  uint32_t len = 0;

  bool Matches(const kvm_run* run) const {
    if (!on || run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write || run->mmio.len != len) return false;
    uint64_t a = run->mmio.phys_addr;
    return a >= first && a <= last && last - a >= len - 1;
  }
};

static int64_t MonotonicMs() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000 + t.tv_nsec / 1000000;
}

// A thread that runs KVM_RUN for one vCPU on request. A run's deadline is
// a timer of this thread (CLOCK_MONOTONIC, kicking it with SIG_KICK), so it
// holds even while the event loop is blocked, and never fires early.
struct Runner {
  int fd;
  kvm_run* run;
  Mapping* mapping;                 // kvm_run's, pinned while the thread may write into it
  AddonData* data;                  // null once environment teardown stopped this runner
  Napi::ObjectReference runBuffer;  // keeps the kvm_run view alive
  Napi::ThreadSafeFunction done;
  std::thread thread;
  std::mutex mu;
  std::mutex kickMu;
  std::condition_variable cv;
  bool pending = false;    // a run was requested
  int32_t timeoutMs = -1;  // its deadline: -1 none, 0 at once
  MmioResume resume;       // the MMIO writes that run resumes on this thread
  uint64_t resumed = 0;    // how many the last finished run resumed (JavaScript thread only)
  pid_t tid = -1;          // the thread's id, for the kick handler's table
  bool stop = false;
  bool unpinned = false;
  std::atomic<bool> inFlight{false};
  int refs = 2;           // the External and the thread-safe function
  bool tsfnGone = false;  // the thread-safe function was finalized
  bool released = false;  // Release() was called on it
  std::vector<Napi::Promise::Deferred> waiters;

  // One run: 0, -EINTR (kicked), -ETIME (its deadline), -EFAULT/-EHWPOISON
  // (memory fault), or 1 with *err (a failure).
  int RunOnce(int32_t ms, timer_t* timer, bool* haveTimer, int* err) {
    if (ms == 0) {
      // A deadline already passed: KVM_RUN completes pending IO/MMIO and
      // returns EINTR at once.
      __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
      int r = DoRun(fd, run, err, tid);
      return r == -EINTR ? -ETIME : r;
    }
    if (ms < 0) return DoRun(fd, run, err, tid);
    if (!*haveTimer) {
      if (CreateKickTimer(timer, tid) < 0) {
        *err = errno;
        return 1;
      }
      *haveTimer = true;
    }
    int r = RunArmed(fd, run, err, tid, *timer, ms);
    itimerspec off{};  // disarmed until the next run with a deadline
    timer_settime(*timer, 0, &off, nullptr);
    return r;
  }

  // RunOnce, resuming the MMIO writes `f` matches; `ms` bounds the whole
  // run. A kick stays in immediate_exit until the run ends, so it also cuts
  // a resumed KVM_RUN short. Past the deadline, the last write is completed
  // by a KVM_RUN with immediate_exit (RunOnce(0)) and the run ends in -ETIME.
  int RunResuming(int32_t ms, const MmioResume& f, uint64_t* count, timer_t* timer, bool* haveTimer, int* err) {
    int64_t end = ms > 0 ? MonotonicMs() + ms : 0;
    int32_t left = ms;
    for (;;) {
      int r = RunOnce(left, timer, haveTimer, err);
      if (r != 0 || !f.Matches(run) || left == 0) return r;
      ++*count;
      if (ms > 0) {
        int64_t rest = end - MonotonicMs();
        left = rest > 0 ? static_cast<int32_t>(rest) : 0;
      }
    }
  }

  void Loop() {
    tid = Gettid();
    timer_t timer{};
    bool haveTimer = false;
    for (;;) {
      bool stopping;
      int32_t ms;
      MmioResume f;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return pending || stop; });
        if (!pending) break;
        pending = false;
        stopping = stop;
        ms = timeoutMs;
        f = resume;
      }
      // A run requested just before the runner was stopped still settles
      // its promise (as an interrupted run) instead of staying pending.
      int err = 0;
      uint64_t count = 0;
      int r = stopping ? -EINTR : RunResuming(ms, f, &count, &timer, &haveTimer, &err);
      {
        // Under kickMu, so a concurrent Kick() either lands in this run
        // (and is cleared here) or sees the run finished and does nothing:
        // a stale immediate_exit would cut the next run short.
        std::lock_guard<std::mutex> lk(kickMu);
        inFlight.store(false);
        __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
      }
      auto* result = new RunResult{r, err, count};
      napi_status st = done.NonBlockingCall(result, [this](Napi::Env env, Napi::Function, RunResult* res) {
        int rr = res->r, ee = res->err;
        resumed = res->resumed;
        delete res;
        if (waiters.empty()) return;
        Napi::Promise::Deferred d = waiters.front();
        waiters.erase(waiters.begin());
        done.Unref(env);
        if (rr == 1) {
          AddonData& data = Data(env);
          Napi::Value e = data.errorFactory.Call({Napi::Number::New(env, ee), Napi::String::New(env, "ioctl(KVM_RUN)")});
          d.Reject(e);
        } else {
          d.Resolve(Napi::Number::New(env, rr));
        }
      });
      // The function is closing (environment teardown): nobody waits anymore.
      if (st != napi_ok) delete result;
      if (stopping) break;
    }
    if (haveTimer) timer_delete(timer);
  }

  // Stops and joins the thread (kicking a running guest first), then lets
  // go of kvm_run. Idempotent; on the JavaScript thread only.
  void Stop() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv.notify_one();
    Kick();
    if (thread.joinable()) thread.join();
    if (!unpinned) {
      unpinned = true;
      UnpinMapping(mapping);
    }
  }

  // Kicks an in-flight run (no-op otherwise).
  void Kick() {
    std::lock_guard<std::mutex> lk(kickMu);
    if (!inFlight.load()) return;
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (thread.joinable()) pthread_kill(thread.native_handle(), SigKick());
  }
};

void StopRunner(Runner* r) {
  r->Stop();
  r->data = nullptr;
}

// The Runner has two owners, both finalized on the main thread in either
// order (at environment teardown Node finalizes thread-safe functions and
// Externals in no fixed order): the External handed to JavaScript and the
// thread-safe function. Each stops the thread (idempotent) and drops its
// reference; the last one frees the Runner.
static void Unref(Runner* r) {
  if (--r->refs > 0) return;
  if (r->data != nullptr) r->data->runners.erase(r);
  delete r;
}

static void FinalizeRunner(Napi::Env, Runner* r) {
  r->Stop();
  if (!r->tsfnGone && !r->released) {
    r->released = true;
    r->done.Release();
  }
  Unref(r);
}

static void DeleteRunner(Napi::Env, void*, Runner* r) {
  r->tsfnGone = true;
  r->Stop();
  Unref(r);
}

// runnerCreate(vcpuFd, runBuffer) -> handle
static Napi::Value RunnerCreate(const Napi::CallbackInfo& info) {
  const char* fn = "runnerCreate";
  ExpectArgs(info, 2, fn);
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, fn, "vcpuFd");
  Mapping* m = RunMappingArg(info, 1, fn);
  InstallKickHandler();
  auto* r = new Runner();
  r->fd = fd;
  r->run = static_cast<kvm_run*>(m->addr);
  r->mapping = m;
  r->data = &Data(env);
  PinMapping(m);
  // The thread first: it touches nothing but its condition variable until a
  // run is requested. A process out of threads or address space
  // (RLIMIT_NPROC, RLIMIT_AS) gets EAGAIN as a KvmError, not an abort.
  try {
    r->thread = std::thread([r] { r->Loop(); });
  } catch (const std::system_error& e) {
    UnpinMapping(m);
    delete r;
    int err = e.code().value();
    ThrowErrno(env, err > 0 ? err : EAGAIN, "pthread_create");
  }
  try {
    r->runBuffer = Napi::Persistent(info[1].As<Napi::Object>());
    r->done = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "kvm-gmem vcpu", 0, 1, r,
                                            DeleteRunner, static_cast<void*>(nullptr));
  } catch (...) {
    r->Stop();
    delete r;
    throw;
  }
  r->done.Unref(env);
  r->data->runners.insert(r);
  return Napi::External<Runner>::New(env, r, FinalizeRunner);
}

static Runner* RunnerArg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw ArgError(info.Env(), std::string(fn) + ": expected a runner handle");
  Runner* r = info[0].As<Napi::External<Runner>>().Data();
  if (r->stop) throw ArgError(info.Env(), std::string(fn) + ": the runner was destroyed", kArgValue);
  return r;
}

// runnerRun(handle, timeoutMs[, first, last, len]) -> Promise<0 | -EINTR | -ETIME | -EFAULT | -EHWPOISON>
// timeoutMs: -1 no deadline, 0 at once, else milliseconds. With first, last
// (u64, first <= last) and len (1, 2, 4 or 8), MMIO writes of len bytes in
// [first, last] are resumed on the runner's thread (MmioResume);
// runnerResumed() then says how many.
static Napi::Value RunnerRun(const Napi::CallbackInfo& info) {
  ExpectArgs(info, info.Length() == 5 ? 5 : 2, "runnerRun");
  Runner* r = RunnerArg(info, "runnerRun");
  double t = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -2;
  if (!(t == -1 || (t >= 0 && t <= INT32_MAX && static_cast<int32_t>(t) == t)))
    throw ArgError(info.Env(), "runnerRun: timeoutMs must be -1 or an integer 0..2^31-1", kArgValue);
  MmioResume f;
  if (info.Length() == 5) {
    f.first = U64Arg(info, 2, "runnerRun", "first");
    f.last = U64Arg(info, 3, "runnerRun", "last");
    double n = info[4].IsNumber() ? info[4].As<Napi::Number>().DoubleValue() : 0;
    if (!(n == 1 || n == 2 || n == 4 || n == 8)) throw ArgError(info.Env(), "runnerRun: len must be 1, 2, 4 or 8", kArgValue);
    if (f.first > f.last) throw ArgError(info.Env(), "runnerRun: first must not be above last", kArgValue);
    f.len = static_cast<uint32_t>(n);
    f.on = true;
  }
  if (!r->waiters.empty()) throw ArgError(info.Env(), "runnerRun: this vCPU is already running", "ERR_KVM_VCPU_BUSY");
  auto d = Napi::Promise::Deferred::New(info.Env());
  r->waiters.push_back(d);
  r->done.Ref(info.Env());  // keep the process alive while the guest runs
  r->inFlight.store(true);
  {
    std::lock_guard<std::mutex> lk(r->mu);
    r->pending = true;
    r->timeoutMs = static_cast<int32_t>(t);
    r->resume = f;
  }
  r->cv.notify_one();
  return d.Promise();
}

// runnerResumed(handle) -> the MMIO writes the last finished run resumed.
static Napi::Value RunnerResumed(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw ArgError(info.Env(), "runnerResumed: expected a runner handle");
  Runner* r = info[0].As<Napi::External<Runner>>().Data();
  return Napi::Number::New(info.Env(), static_cast<double>(r->resumed));
}

// runnerKick(handle): makes an in-flight run return EINTR (no-op when idle
// or destroyed).
static void RunnerKick(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw ArgError(info.Env(), "runnerKick: expected a runner handle");
  Runner* r = info[0].As<Napi::External<Runner>>().Data();
  if (!r->stop) r->Kick();
}

// runnerDestroy(handle): stops the thread (kicking a running guest first).
static void RunnerDestroy(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw ArgError(info.Env(), "runnerDestroy: expected a runner handle");
  Runner* r = info[0].As<Napi::External<Runner>>().Data();
  if (!r->stop) r->Stop();
}

// Copies between a JS byte buffer and a kernel struct of exactly that size.
template <typename T>
static T* StructArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw ArgError(info.Env(), std::string(fn) + ": expected a Uint8Array");
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  if (a.ByteLength() != sizeof(T))
    throw ArgError(info.Env(),
                   std::string(fn) + ": expected " + std::to_string(sizeof(T)) + " bytes, got " + std::to_string(a.ByteLength()),
                   kArgValue);
  return reinterpret_cast<T*>(a.Data());
}

#define STRUCT_IOCTL(NAME, REQ, TYPE)                                            \
  static void NAME(const Napi::CallbackInfo& info) {                             \
    ExpectArgs(info, 2, #NAME);                                                  \
    int fd = FdArg(info, 0, #NAME, "vcpuFd");                                    \
    TYPE* s = StructArg<TYPE>(info, 1, #NAME);                                   \
    if (ioctl(fd, REQ, s) < 0) ThrowErrno(info.Env(), errno, "ioctl(" #REQ ")"); \
  }

STRUCT_IOCTL(GetRegs, KVM_GET_REGS, kvm_regs)
STRUCT_IOCTL(SetRegs, KVM_SET_REGS, kvm_regs)
STRUCT_IOCTL(GetSregs, KVM_GET_SREGS, kvm_sregs)
STRUCT_IOCTL(SetSregs, KVM_SET_SREGS, kvm_sregs)

// setCpuid2(vcpuFd, entries: Uint8Array of kvm_cpuid_entry2[])
static void SetCpuid2(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "setCpuid2");
  int fd = FdArg(info, 0, "setCpuid2", "vcpuFd");
  if (!info[1].IsTypedArray()) throw ArgError(info.Env(), "setCpuid2: expected a Uint8Array of kvm_cpuid_entry2");
  Napi::Uint8Array a = info[1].As<Napi::Uint8Array>();
  if (a.ByteLength() % sizeof(kvm_cpuid_entry2) != 0) throw ArgError(info.Env(), "setCpuid2: length is not a multiple of 40", kArgValue);
  size_t n = a.ByteLength() / sizeof(kvm_cpuid_entry2);
  std::vector<uint8_t> buf(sizeof(kvmgmem_cpuid2_header) + a.ByteLength());
  auto* c = reinterpret_cast<kvmgmem_cpuid2_header*>(buf.data());
  c->nent = static_cast<uint32_t>(n);
  // An empty array has no data pointer to copy from (memcpy(…, NULL, 0) is UB).
  if (n > 0) std::memcpy(buf.data() + sizeof *c, a.Data(), a.ByteLength());
  if (ioctl(fd, KVMGMEM_SET_CPUID2, c) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_CPUID2)");
}

// preFaultMemory(vcpuFd, gpa, size, flags, timeoutMs) -> { gpa, size } as
// written back (partial progress returns 0 with the remainder; errors throw).
// timeoutMs > 0 bounds the call: kvm_tdp_map_page() retries a fault for as
// long as it answers RET_PF_RETRY and leaves only on a pending signal, and
// Linux 6.12 can retry without end (found by the fuzz campaign in the 6.12
// test VM), which would hang this thread for good. A one-shot kick timer of
// this thread sends that signal at the deadline: after progress the kernel
// returns 0 with the remainder, before any it fails with EINTR, reported as
// ETIME. An EINTR from any other signal sends the rest again.
static Napi::Value PreFaultMemory(const Napi::CallbackInfo& info) {
  const char* fn = "preFaultMemory";
  ExpectArgs(info, 5, fn);
  int fd = FdArg(info, 0, fn, "vcpuFd");
  kvm_pre_fault_memory p;
  std::memset(&p, 0, sizeof p);
  p.gpa = U64Arg(info, 1, fn, "gpa");
  p.size = U64Arg(info, 2, fn, "size");
  p.flags = U64Arg(info, 3, fn, "flags");
  int32_t timeoutMs = 0;
  if (!RawSmallInt(info.Env(), info[4], &timeoutMs))
    throw ArgError(info.Env(), "preFaultMemory: timeoutMs must be an integer 0..2^31-1", kArgValue);
  if (timeoutMs == 0) {
    if (ioctl(fd, KVM_PRE_FAULT_MEMORY, &p) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_PRE_FAULT_MEMORY)");
  } else {
    InstallKickHandler();
    timer_t timer{};
    if (CreateKickTimer(&timer, Gettid()) < 0) ThrowErrno(info.Env(), errno, "timer_create");
    itimerspec its = Millis(timeoutMs);
    timer_settime(timer, 0, &its, nullptr);
    int r;
    int err = 0;
    bool expired = false;
    while ((r = ioctl(fd, KVM_PRE_FAULT_MEMORY, &p)) < 0 && (err = errno) == EINTR && !(expired = TimerExpired(timer))) {
    }
    timer_delete(timer);
    if (r < 0) ThrowErrno(info.Env(), expired ? ETIME : err, "ioctl(KVM_PRE_FAULT_MEMORY)");
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("gpa", U64Value(info.Env(), p.gpa));
  o.Set("size", U64Value(info.Env(), p.size));
  return o;
}

// withInterrupts(intervalUs, fn) -> fn(): calls fn with an interval timer
// that sends this thread the kick signal every intervalUs microseconds
// (1000..1,000,000: the kernel rearms an interval timer when its signal is
// dequeued, so an interval shorter than the handler's round trip, which
// under QEMU TCG with ASan nears 100 us, would leave the thread handling
// signals and nothing else), then deletes the timer however fn ends (a throw, or a
// worker terminated inside it). The handler does nothing but stop a run of
// this thread, so a syscall that checks signal_pending() (mm_take_all_locks
// in KVM_CREATE_VM, kvm_gmem_allocate per folio) fails with EINTR. A timer,
// not another process sending signals: the timer's interrupt marks the
// signal pending while this thread is inside the kernel, which a sender
// process on a single CPU without kernel preemption never gets to do.
static Napi::Value WithInterrupts(const Napi::CallbackInfo& info) {
  const char* fn = "withInterrupts";
  ExpectArgs(info, 2, fn);
  int32_t us = 0;
  if (!RawSmallInt(info.Env(), info[0], &us) || us < 1000 || us > 1000000)
    throw ArgError(info.Env(), "withInterrupts: intervalUs must be an integer 1000..1000000", kArgValue);
  if (!info[1].IsFunction()) throw ArgError(info.Env(), "withInterrupts: fn must be a function", kArgType);
  Napi::Function body = info[1].As<Napi::Function>();
  InstallKickHandler();
  timer_t id{};
  if (CreateKickTimer(&id, Gettid()) < 0) ThrowErrno(info.Env(), errno, "timer_create");
  struct Deleter {
    timer_t id;
    ~Deleter() { timer_delete(id); }
  } timer{id};
  itimerspec its{};
  its.it_value.tv_nsec = static_cast<long>(us % 1000000) * 1000L;
  its.it_value.tv_sec = us / 1000000;
  its.it_interval = its.it_value;
  timer_settime(timer.id, 0, &its, nullptr);
  return body.Call(info.Env().Undefined(), {});
}

// exports.kvmRunLayout = { offsets: { 'io.port': 34, ... }, lengths: { mmioData: 8, ... }, size }:
// struct kvm_run as this addon was compiled (the table in uapi.h), for the
// test that holds lib/binding/kvm-run.ts to it. A value, not a function.
static Napi::Object KvmRunLayout(Napi::Env env) {
  Napi::Object offsets = Napi::Object::New(env);
  Napi::Object lengths = Napi::Object::New(env);
#define KVMGMEM_SET_OFFSET(name, compiled, kernel) offsets.Set(name, Napi::Number::New(env, static_cast<double>(compiled)));
#define KVMGMEM_SET_LENGTH(name, compiled, kernel) lengths.Set(name, Napi::Number::New(env, static_cast<double>(compiled)));
  KVMGMEM_KVM_RUN_OFFSETS(KVMGMEM_SET_OFFSET)
  KVMGMEM_KVM_RUN_LENGTHS(KVMGMEM_SET_LENGTH)
#undef KVMGMEM_SET_OFFSET
#undef KVMGMEM_SET_LENGTH
  Napi::Object o = Napi::Object::New(env);
  o.Set("offsets", offsets);
  o.Set("lengths", lengths);
  o.Set("size", Napi::Number::New(env, static_cast<double>(sizeof(struct kvm_run))));
  return o;
}

void InitVcpu(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmRunLayout", KvmRunLayout(env));
  exports.Set("createVcpu", Napi::Function::New(env, CreateVcpu, "createVcpu"));
  exports.Set("runSyncBind", Napi::Function::New(env, RunSyncBind, "runSyncBind"));
  exports.Set("runSyncUnbind", Napi::Function::New(env, RunSyncUnbind, "runSyncUnbind"));
  exports.Set("runnerCreate", Napi::Function::New(env, RunnerCreate, "runnerCreate"));
  exports.Set("runnerRun", Napi::Function::New(env, RunnerRun, "runnerRun"));
  exports.Set("runnerKick", Napi::Function::New(env, RunnerKick, "runnerKick"));
  exports.Set("runnerResumed", Napi::Function::New(env, RunnerResumed, "runnerResumed"));
  exports.Set("runnerDestroy", Napi::Function::New(env, RunnerDestroy, "runnerDestroy"));
  exports.Set("getRegs", Napi::Function::New(env, GetRegs, "getRegs"));
  exports.Set("setRegs", Napi::Function::New(env, SetRegs, "setRegs"));
  exports.Set("getSregs", Napi::Function::New(env, GetSregs, "getSregs"));
  exports.Set("setSregs", Napi::Function::New(env, SetSregs, "setSregs"));
  exports.Set("setCpuid2", Napi::Function::New(env, SetCpuid2, "setCpuid2"));
  exports.Set("preFaultMemory", Napi::Function::New(env, PreFaultMemory, "preFaultMemory"));
  exports.Set("withInterrupts", Napi::Function::New(env, WithInterrupts, "withInterrupts"));
}

}  // namespace kvmgmem
