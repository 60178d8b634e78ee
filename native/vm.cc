// A KVM VM fd: the VM ioctls this package wraps.
// KVM_SET_USER_MEMORY_REGION2 (and v1 for kernels before 6.8), KVM_SET_MEMORY_ATTRIBUTES,
// KVM_CREATE_GUEST_MEMFD and KVM_ENABLE_CAP (Documentation/virt/kvm/api.rst
// 4.140, 4.141, 4.143, 4.37). Every argument is passed through unchanged so
// the raw layer can send the kernel a bad request on purpose; the rules are
// checked in lib/ before these are called.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "addon.h"
#include "uapi.h"

namespace kvmgmem {

// setUserMemoryRegion2(vmFd, slot, flags, gpa, size, uaddr, gmemOffset, gmemFd)
static void SetUserMemoryRegion2(const Napi::CallbackInfo& info) {
  const char* fn = "setUserMemoryRegion2";
  ExpectArgs(info, 8, fn);
  int vm = FdArg(info, 0, fn, "vmFd");
  kvm_userspace_memory_region2 r;
  std::memset(&r, 0, sizeof r);
  r.slot = U32Arg(info, 1, fn, "slot");
  r.flags = U32Arg(info, 2, fn, "flags");
  r.guest_phys_addr = U64Arg(info, 3, fn, "guestPhysAddr");
  r.memory_size = U64Arg(info, 4, fn, "memorySize");
  r.userspace_addr = U64Arg(info, 5, fn, "userspaceAddr");
  r.guest_memfd_offset = U64Arg(info, 6, fn, "guestMemfdOffset");
  r.guest_memfd = U32Arg(info, 7, fn, "guestMemfd");
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_USER_MEMORY_REGION2)");
}

// setUserMemoryRegion(vmFd, slot, flags, gpa, size, uaddr): the v1 ioctl,
// the only one before 6.8 (KVM_CAP_USER_MEMORY2 absent). Same rules as v2 for
// memslots without guest_memfd; kvm_main.c turns it into the v2 struct.
static void SetUserMemoryRegion(const Napi::CallbackInfo& info) {
  const char* fn = "setUserMemoryRegion";
  ExpectArgs(info, 6, fn);
  int vm = FdArg(info, 0, fn, "vmFd");
  kvm_userspace_memory_region r;
  std::memset(&r, 0, sizeof r);
  r.slot = U32Arg(info, 1, fn, "slot");
  r.flags = U32Arg(info, 2, fn, "flags");
  r.guest_phys_addr = U64Arg(info, 3, fn, "guestPhysAddr");
  r.memory_size = U64Arg(info, 4, fn, "memorySize");
  r.userspace_addr = U64Arg(info, 5, fn, "userspaceAddr");
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_USER_MEMORY_REGION)");
}

// setMemoryAttributes(vmFd, address, size, attributes, flags)
static void SetMemoryAttributes(const Napi::CallbackInfo& info) {
  const char* fn = "setMemoryAttributes";
  ExpectArgs(info, 5, fn);
  int vm = FdArg(info, 0, fn, "vmFd");
  kvm_memory_attributes a;
  a.address = U64Arg(info, 1, fn, "address");
  a.size = U64Arg(info, 2, fn, "size");
  a.attributes = U64Arg(info, 3, fn, "attributes");
  a.flags = U64Arg(info, 4, fn, "flags");
  if (ioctl(vm, KVM_SET_MEMORY_ATTRIBUTES, &a) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_MEMORY_ATTRIBUTES)");
}

// KVM_CREATE_GUEST_MEMFD installs the new fd without O_CLOEXEC
// (guest_memfd.c: get_unused_fd_flags(0)), and no flag asks for it. Setting
// FD_CLOEXEC afterwards leaves a window in which a child started by another
// thread (libuv forks; posix_spawn and vfork clone) inherits the file, keeps
// the VM's memory alive and, with the mmap flag, can map guest memory; under
// load 26% of the children did. So the ioctl runs on a helper thread with a
// private, otherwise empty fd table (unshare(CLONE_FILES)): the VM fd goes
// there and the new fd comes back over an AF_UNIX socket (SCM_RIGHTS), and
// recvmsg(MSG_CMSG_CLOEXEC) installs it in the process's table already
// close-on-exec. The helper lives as long as the process, serves every
// environment (one request at a time), and blocks every signal: a
// process-directed signal handled there would see its private table (libuv's
// signal pipe is not in it).
namespace {

class GmemHelper {
 public:
  // The fd, or -1 with *err (-1: the helper is unavailable here).
  int Create(int vm, const kvm_create_guest_memfd& c, int* err) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!Ready()) {
      *err = -1;
      return -1;
    }
    int reply = 0;
    int fd = SendWithFd(sock_, &c, sizeof c, vm) ? RecvWithFd(sock_, &reply, sizeof reply, MSG_CMSG_CLOEXEC) : -2;
    if (fd == -2) {
      // The socket broke (closed under us by a stray close(), say): leave it
      // alone, which may now be someone else's fd, and start a new helper
      // next time; this call takes the fallback path.
      started_ = false;
      *err = -1;
      return -1;
    }
    if (fd >= 0) return fd;
    // No fd: the kernel's errno, or EMFILE when this process's table was
    // full (the kernel then drops the passed fd and sets MSG_CTRUNC).
    *err = reply != 0 ? reply : EMFILE;
    return -1;
  }

 private:
  // Starts the helper once per process. A helper that could not make its
  // table private (unshare refused by a sandbox) is not tried again: sock_
  // stays -1 and every create takes the fallback path.
  bool Ready() {
    if (started_ && pid_ == getpid()) return sock_ >= 0;
    started_ = true;
    pid_ = getpid();
    sock_ = -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return false;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);  // the thread starts with every signal blocked
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int* arg = new int(sv[1]);
    int rc = pthread_create(&t, &attr, Serve, arg);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (rc != 0) {
      delete arg;
      close(sv[0]);
      close(sv[1]);
      started_ = false;  // try again next time (RLIMIT_NPROC, RLIMIT_AS)
      return false;
    }
    // The helper answers once with 0 when its table is private, or errno.
    int status = 0;
    bool answered = RecvWithFd(sv[0], &status, sizeof status, 0) != -2;
    // The helper's end leaves this process's table either way: with a private
    // table the helper holds its own copy; without one it has exited. So the
    // helper costs the process exactly one fd, sock_, for its whole life.
    close(sv[1]);
    if (!answered || status != 0) {
      close(sv[0]);  // the helper, if it runs, sees EOF and exits
      return false;
    }
    sock_ = sv[0];
    return true;
  }

  static void* Serve(void* p) {
    int sock = *static_cast<int*>(p);
    delete static_cast<int*>(p);
    int status = 0;
    if (unshare(CLONE_FILES) < 0) status = errno;
    // Nothing but the socket in the private table.
    if (status == 0 && sock > 0) syscall(SYS_close_range, 0u, static_cast<unsigned>(sock - 1), 0u);
    if (status == 0) syscall(SYS_close_range, static_cast<unsigned>(sock + 1), ~0u, 0u);
    send(sock, &status, sizeof status, MSG_NOSIGNAL);
    if (status != 0) return nullptr;
    for (;;) {
      kvm_create_guest_memfd req;
      int vm = RecvWithFd(sock, &req, sizeof req, 0);
      if (vm == -2) return nullptr;  // the process side closed the socket
      int fd = vm < 0 ? -1 : ioctl(vm, KVM_CREATE_GUEST_MEMFD, &req);
      int reply = vm < 0 ? EBADF : fd < 0 ? errno : 0;
      if (vm >= 0) close(vm);
      SendWithFd(sock, &reply, sizeof reply, fd);
      if (fd >= 0) close(fd);
    }
  }

  // sendmsg of `len` bytes with `fd` attached (none if fd < 0).
  static bool SendWithFd(int sock, const void* data, size_t len, int fd) {
    msghdr msg{};
    iovec iov{const_cast<void*>(data), len};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    ssize_t n;
    while ((n = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
    }
    return n == static_cast<ssize_t>(len);
  }

  // recvmsg of `len` bytes: the fd attached, -1 if none, -2 on failure or EOF.
  static int RecvWithFd(int sock, void* data, size_t len, int flags) {
    msghdr msg{};
    iovec iov{data, len};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    while ((n = recvmsg(sock, &msg, flags)) < 0 && errno == EINTR) {
    }
    if (n <= 0) {
      if (n == 0) errno = EPIPE;
      return -2;
    }
    int fd = -1;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) std::memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    }
    return fd;
  }

  std::mutex mu_;
  bool started_ = false;
  pid_t pid_ = 0;
  int sock_ = -1;
};

GmemHelper gmemHelper;

}  // namespace

// createGuestMemfd(vmFd, size, flags) -> fd, close-on-exec from the start
// (see above); where that path is unavailable, FD_CLOEXEC is set right after
// the ioctl, before JavaScript ever sees the number.
static Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  const char* fn = "createGuestMemfd";
  ExpectArgs(info, 3, fn);
  int vm = FdArg(info, 0, fn, "vmFd");
  kvm_create_guest_memfd c;
  std::memset(&c, 0, sizeof c);
  c.size = U64Arg(info, 1, fn, "size");
  c.flags = U64Arg(info, 2, fn, "flags");
  // A size the kernel refuses before it reserves an fd (kvm_gmem_create():
  // size <= 0 as a loff_t, or not page-aligned: EINVAL in every version) has
  // no fd to leak to a child, so it skips the helper's round trip: the
  // selftests send thousands of them (GM-1, sizes 1..4095).
  const bool refusedBeforeFd = static_cast<int64_t>(c.size) <= 0 || (c.size & (static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) - 1)) != 0;
  int fd = -1;
  int err = -1;  // -1: ask the kernel here (no helper, or no fd to protect)
  if (!refusedBeforeFd) fd = gmemHelper.Create(vm, c, &err);
  if (fd < 0 && err == -1) {
    fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &c);
    if (fd < 0)
      err = errno;
    else if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
      err = errno;
      close(fd);
      ThrowErrno(info.Env(), err, "fcntl(F_SETFD, FD_CLOEXEC)");
    }
  }
  if (fd < 0) ThrowErrno(info.Env(), err, "ioctl(KVM_CREATE_GUEST_MEMFD)");
  TrackGuestMemfd(info.Env(), fd, c.flags);
  return Napi::Number::New(info.Env(), fd);
}

// enableCap(vmOrVcpuFd, cap, flags, args[4])
static void EnableCap(const Napi::CallbackInfo& info) {
  const char* fn = "enableCap";
  ExpectArgs(info, 4, fn);
  int fd = FdArg(info, 0, fn, "fd");
  kvm_enable_cap c;
  std::memset(&c, 0, sizeof c);
  c.cap = U32Arg(info, 1, fn, "cap");
  c.flags = U32Arg(info, 2, fn, "flags");
  if (!info[3].IsArray()) throw ArgError(info.Env(), "enableCap: argument 'args' must be an array");
  Napi::Array args = info[3].As<Napi::Array>();
  if (args.Length() > 4) throw ArgError(info.Env(), "enableCap: at most 4 args", kArgValue);
  for (uint32_t i = 0; i < args.Length(); i++) {
    Napi::Value v = args[i];
    if (v.IsBigInt()) {
      bool lossless = false;
      c.args[i] = v.As<Napi::BigInt>().Uint64Value(&lossless);
      if (!lossless) throw ArgError(info.Env(), "enableCap: args must fit in 64 bits", kArgValue);
    } else if (v.IsNumber() && v.As<Napi::Number>().DoubleValue() >= 0) {
      c.args[i] = static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
    } else {
      throw ArgError(info.Env(), "enableCap: args must be non-negative integers or bigints", v.IsNumber() ? kArgValue : kArgType);
    }
  }
  if (ioctl(fd, KVM_ENABLE_CAP, &c) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_ENABLE_CAP)");
}

// setNrMmuPages(vmFd, pages): KVM_SET_NR_MMU_PAGES, the shadow MMU's page
// budget (set_memory_region_test sets 64 before running a VM with no
// memslot; 6.1 answers that KVM_RUN with ENOSPC without it).
static void SetNrMmuPages(const Napi::CallbackInfo& info) {
  const char* fn = "setNrMmuPages";
  ExpectArgs(info, 2, fn);
  int fd = FdArg(info, 0, fn, "fd");
  uint64_t pages = U64Arg(info, 1, fn, "pages");
  if (ioctl(fd, KVM_SET_NR_MMU_PAGES, static_cast<unsigned long>(pages)) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_NR_MMU_PAGES)");
}

void InitVm(Napi::Env env, Napi::Object exports) {
  exports.Set("setNrMmuPages", Napi::Function::New(env, SetNrMmuPages, "setNrMmuPages"));
  exports.Set("setUserMemoryRegion2", Napi::Function::New(env, SetUserMemoryRegion2, "setUserMemoryRegion2"));
  exports.Set("setUserMemoryRegion", Napi::Function::New(env, SetUserMemoryRegion, "setUserMemoryRegion"));
  exports.Set("setMemoryAttributes", Napi::Function::New(env, SetMemoryAttributes, "setMemoryAttributes"));
  exports.Set("createGuestMemfd", Napi::Function::New(env, CreateGuestMemfd, "createGuestMemfd"));
  exports.Set("enableCap", Napi::Function::New(env, EnableCap, "enableCap"));
}

}  // namespace kvmgmem
