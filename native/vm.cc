// A KVM VM fd: the VM ioctls this package wraps.
// KVM_SET_USER_MEMORY_REGION2, KVM_SET_MEMORY_ATTRIBUTES,
// KVM_CREATE_GUEST_MEMFD and KVM_ENABLE_CAP (Documentation/virt/kvm/api.rst
// 4.140, 4.141, 4.143, 4.37). Every argument is passed through unchanged so
// the raw layer can send the kernel a bad request on purpose; the rules are
// checked in lib/ before these are called.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0)
    ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_USER_MEMORY_REGION2)");
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
  if (ioctl(vm, KVM_SET_MEMORY_ATTRIBUTES, &a) < 0)
    ThrowErrno(info.Env(), errno, "ioctl(KVM_SET_MEMORY_ATTRIBUTES)");
}

// createGuestMemfd(vmFd, size, flags) -> fd with FD_CLOEXEC set. The kernel
// installs the fd without O_CLOEXEC (guest_memfd.c: get_unused_fd_flags(0)),
// so it is set here before JavaScript ever sees the number.
static Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  const char* fn = "createGuestMemfd";
  ExpectArgs(info, 3, fn);
  int vm = FdArg(info, 0, fn, "vmFd");
  kvm_create_guest_memfd c;
  std::memset(&c, 0, sizeof c);
  c.size = U64Arg(info, 1, fn, "size");
  c.flags = U64Arg(info, 2, fn, "flags");
  int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &c);
  if (fd < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_CREATE_GUEST_MEMFD)");
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(info.Env(), err, "fcntl(F_SETFD, FD_CLOEXEC)");
  }
  TrackFd(info.Env(), fd);
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
  if (!info[3].IsArray()) throw Napi::TypeError::New(info.Env(), "enableCap: argument 'args' must be an array");
  Napi::Array args = info[3].As<Napi::Array>();
  if (args.Length() > 4) throw Napi::TypeError::New(info.Env(), "enableCap: at most 4 args");
  for (uint32_t i = 0; i < args.Length(); i++) {
    Napi::Value v = args[i];
    if (v.IsBigInt()) {
      bool lossless = false;
      c.args[i] = v.As<Napi::BigInt>().Uint64Value(&lossless);
      if (!lossless) throw Napi::TypeError::New(info.Env(), "enableCap: args must fit in 64 bits");
    } else if (v.IsNumber() && v.As<Napi::Number>().DoubleValue() >= 0) {
      c.args[i] = static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
    } else {
      throw Napi::TypeError::New(info.Env(), "enableCap: args must be non-negative integers or bigints");
    }
  }
  if (ioctl(fd, KVM_ENABLE_CAP, &c) < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_ENABLE_CAP)");
}

void InitVm(Napi::Env env, Napi::Object exports) {
  exports.Set("setUserMemoryRegion2", Napi::Function::New(env, SetUserMemoryRegion2, "setUserMemoryRegion2"));
  exports.Set("setMemoryAttributes", Napi::Function::New(env, SetMemoryAttributes, "setMemoryAttributes"));
  exports.Set("createGuestMemfd", Napi::Function::New(env, CreateGuestMemfd, "createGuestMemfd"));
  exports.Set("enableCap", Napi::Function::New(env, EnableCap, "enableCap"));
}

}  // namespace kvmgmem
