// /dev/kvm: the system-level KVM interface.
// Implements open(2)/close(2) of KVM fds and the system ioctls
// KVM_GET_API_VERSION, KVM_CHECK_EXTENSION (also valid on a VM fd),
// KVM_CREATE_VM, KVM_GET_VCPU_MMAP_SIZE and KVM_GET_SUPPORTED_CPUID
// (Documentation/virt/kvm/api.rst, section 4). One function per syscall;
// policy lives in lib/kvm/kvm.ts.
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "addon.h"
#include "uapi.h"

namespace kvmgmem {

// openDevice(path) -> fd, opened O_RDWR|O_CLOEXEC.
static Napi::Value OpenDevice(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "openDevice");
  if (!info[0].IsString()) throw ArgError(info.Env(), "openDevice: argument 'path' must be a string");
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "open");
  TrackFd(info.Env(), fd);
  return Napi::Number::New(info.Env(), fd);
}

// close(fd). The caller has already forgotten the fd, so a failure here
// (EBADF means a bookkeeping bug) is reported but never retried.
static void Close(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "close");
  int fd = FdArg(info, 0, "close", "fd");
  UntrackFd(info.Env(), fd);
  if (close(fd) < 0 && errno != EINTR) ThrowErrno(info.Env(), errno, "close");
}

// ioctl(fd, req, 0) returning the kernel's non-negative int result.
static int IoctlInt(Napi::Env env, int fd, unsigned long req, unsigned long arg, const char* name) {
  int r = ioctl(fd, req, arg);
  if (r < 0) ThrowErrno(env, errno, name);
  return r;
}

static Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "getApiVersion");
  int fd = FdArg(info, 0, "getApiVersion", "fd");
  return Napi::Number::New(info.Env(), IoctlInt(info.Env(), fd, KVM_GET_API_VERSION, 0, "ioctl(KVM_GET_API_VERSION)"));
}

// The ioctl behind both plain-Node-API forms below.
static napi_value IssueCheckExtension(napi_env env, int fd, int32_t cap) {
  int r = ioctl(fd, KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
  if (r < 0) return ThrowErrnoRaw(env, errno, "ioctl(KVM_CHECK_EXTENSION)");
  return RawInt32(env, r);
}

// checkExtension(fd, cap) -> int. Valid on /dev/kvm and on a VM fd; the VM
// answer is the one that counts for VM types other than the default.
// Plain Node-API rather than node-addon-api: this is the cheapest ioctl, so
// the call overhead is all there is to measure (tools/bench).
static napi_value CheckExtension(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr);
  int32_t fd, cap;
  if (argc != 2 || !RawSmallInt(env, argv[0], &fd) || !RawSmallInt(env, argv[1], &cap)) {
    napi_throw_type_error(env, kArgType, "checkExtension: expected (fd, cap), both integers 0..2^31-1");
    return nullptr;
  }
  return IssueCheckExtension(env, fd, cap);
}

// checkExtensionBind(fd) -> check(cap) -> int: checkExtension with the fd
// carried by the function, so a call converts one argument instead of two.
// The Kvm and Vm objects call it only after their own closed check, as they
// do for every fd they pass.
static napi_value BoundCheckExtension(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value arg;
  void* data = nullptr;
  napi_get_cb_info(env, cbinfo, &argc, &arg, nullptr, &data);
  int32_t cap;
  if (argc != 1 || !RawSmallInt(env, arg, &cap)) {
    napi_throw_type_error(env, kArgType, "checkExtension: expected (cap), an integer 0..2^31-1");
    return nullptr;
  }
  return IssueCheckExtension(env, static_cast<int>(reinterpret_cast<intptr_t>(data)), cap);
}

static Napi::Value CheckExtensionBind(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "checkExtensionBind");
  int fd = FdArg(info, 0, "checkExtensionBind", "fd");
  napi_value fn;
  napi_create_function(info.Env(), "checkExtension", NAPI_AUTO_LENGTH, BoundCheckExtension,
                       reinterpret_cast<void*>(static_cast<intptr_t>(fd)), &fn);
  return Napi::Value(info.Env(), fn);
}

// checkExtensions(fd, caps: Int32Array, out: Int32Array): one
// KVM_CHECK_EXTENSION per cap in a single call from JavaScript (the batch
// form: the capability table reads a score of caps at once). Throws at the
// first failure, naming the cap.
static void CheckExtensions(const Napi::CallbackInfo& info) {
  const char* fn = "checkExtensions";
  ExpectArgs(info, 3, fn);
  int fd = FdArg(info, 0, fn, "fd");
  for (size_t i = 1; i <= 2; i++) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw ArgError(info.Env(), std::string(fn) + ": expected (fd, caps: Int32Array, out: Int32Array)");
  }
  Napi::Int32Array caps = info[1].As<Napi::Int32Array>();
  Napi::Int32Array out = info[2].As<Napi::Int32Array>();
  if (out.ElementLength() < caps.ElementLength()) throw ArgRangeError(info.Env(), std::string(fn) + ": out is shorter than caps");
  for (size_t i = 0; i < caps.ElementLength(); i++) {
    if (caps[i] < 0) throw ArgError(info.Env(), std::string(fn) + ": caps must be non-negative", kArgValue);
  }
  for (size_t i = 0; i < caps.ElementLength(); i++) {
    int r = ioctl(fd, KVM_CHECK_EXTENSION, static_cast<unsigned long>(caps[i]));
    if (r < 0) ThrowErrno(info.Env(), errno, ("ioctl(KVM_CHECK_EXTENSION) for cap " + std::to_string(caps[i])).c_str());
    out[i] = r;
  }
}

// createVm(fd, type) -> VM fd. The kernel installs it with O_CLOEXEC.
static Napi::Value CreateVm(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "createVm");
  int fd = FdArg(info, 0, "createVm", "fd");
  uint32_t type = U32Arg(info, 1, "createVm", "type");
  int vm = ioctl(fd, KVM_CREATE_VM, static_cast<unsigned long>(type));
  if (vm < 0) ThrowErrno(info.Env(), errno, "ioctl(KVM_CREATE_VM)");
  TrackFd(info.Env(), vm);
  return Napi::Number::New(info.Env(), vm);
}

static Napi::Value GetVcpuMmapSize(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "getVcpuMmapSize");
  int fd = FdArg(info, 0, "getVcpuMmapSize", "fd");
  return Napi::Number::New(info.Env(), IoctlInt(info.Env(), fd, KVM_GET_VCPU_MMAP_SIZE, 0, "ioctl(KVM_GET_VCPU_MMAP_SIZE)"));
}

// getSupportedCpuid(fd) -> Buffer of struct kvm_cpuid_entry2[] (40 bytes
// each). Retries with a larger array on E2BIG, as QEMU does.
static Napi::Value GetSupportedCpuid(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "getSupportedCpuid");
  int fd = FdArg(info, 0, "getSupportedCpuid", "fd");
  for (uint32_t n = 64; n <= 4096; n *= 2) {
    std::vector<uint8_t> buf(sizeof(kvmgmem_cpuid2_header) + n * sizeof(kvm_cpuid_entry2));
    auto* c = reinterpret_cast<kvmgmem_cpuid2_header*>(buf.data());
    c->nent = n;
    if (ioctl(fd, KVMGMEM_GET_SUPPORTED_CPUID, c) == 0) {
      return Napi::Buffer<uint8_t>::Copy(info.Env(), buf.data() + sizeof *c, c->nent * sizeof(kvm_cpuid_entry2));
    }
    if (errno != E2BIG) ThrowErrno(info.Env(), errno, "ioctl(KVM_GET_SUPPORTED_CPUID)");
  }
  ThrowErrno(info.Env(), E2BIG, "ioctl(KVM_GET_SUPPORTED_CPUID)");
}

// fdCloexec(fd) -> whether FD_CLOEXEC is set; lets tests check every fd.
static Napi::Value FdCloexec(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "fdCloexec");
  int fd = FdArg(info, 0, "fdCloexec", "fd");
  int f = fcntl(fd, F_GETFD);
  if (f < 0) ThrowErrno(info.Env(), errno, "fcntl(F_GETFD)");
  return Napi::Boolean::New(info.Env(), (f & FD_CLOEXEC) != 0);
}

// memfdCreate(name, flags) -> fd: memfd_create(2), MFD_CLOEXEC always (a
// plain memory file, e.g. the "regular memfd" a guest_memfd binding refuses).
static Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "memfdCreate");
  if (!info[0].IsString()) throw ArgError(info.Env(), "memfdCreate: name must be a string");
  std::string name = info[0].As<Napi::String>();
  if (name.find('\0') != std::string::npos) throw ArgError(info.Env(), "memfdCreate: name must not contain NUL", kArgValue);
  uint32_t flags = U32Arg(info, 1, "memfdCreate", "flags");
  int fd = memfd_create(name.c_str(), flags | MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "memfd_create");
  TrackFd(info.Env(), fd);
  return Napi::Number::New(info.Env(), fd);
}

// fileIo(op, fd, buffer, offset) -> bytes: read(2)/write(2) (offset -1) or
// pread(2)/pwrite(2), for tests of what a file refuses (guest_memfd refuses
// all four). Never blocks: an fd that poll(2) says is not ready answers
// EAGAIN, so a pipe or socket cannot hold the thread. The buffer's bytes are
// taken at the call; the call is synchronous, so no JavaScript can detach it.
static Napi::Value FileIo(const Napi::CallbackInfo& info) {
  const char* fn = "fileIo";
  ExpectArgs(info, 4, fn);
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw ArgError(env, "fileIo: op must be a string");
  std::string op = info[0].As<Napi::String>();
  bool write = op == "write" || op == "pwrite";
  if (!write && op != "read" && op != "pread") throw ArgError(env, "fileIo: op must be read, write, pread or pwrite", kArgValue);
  int fd = FdArg(info, 1, fn, "fd");
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw ArgError(env, "fileIo: buffer must be a Uint8Array");
  Napi::Uint8Array buf = info[2].As<Napi::Uint8Array>();
  bool positioned = op[0] == 'p';
  uint64_t offset = positioned ? U64Arg(info, 3, fn, "offset") : 0;
  if (offset > static_cast<uint64_t>(INT64_MAX)) throw ArgError(env, "fileIo: offset must be below 2^63", kArgValue);
  // pread/pwrite on a pipe or socket fail with ESPIPE before they could
  // wait, so only the calls that can wait ask poll(2) first.
  struct stat st;
  bool mayWait = !positioned || (fstat(fd, &st) == 0 && S_ISCHR(st.st_mode));
  if (mayWait) {
    struct pollfd p = {fd, static_cast<short>(write ? POLLOUT : POLLIN), 0};
    int r = poll(&p, 1, 0);
    if (r < 0) ThrowErrno(env, errno, "poll");
    if (p.revents & POLLNVAL) ThrowErrno(env, EBADF, op.c_str());
    if (r == 0) ThrowErrno(env, EAGAIN, op.c_str());
  }
  ssize_t n;
  uint8_t* data = buf.ByteLength() == 0 ? nullptr : buf.Data();
  size_t len = buf.ByteLength();
  if (op == "read")
    n = read(fd, data, len);
  else if (op == "write")
    n = ::write(fd, data, len);
  else if (op == "pread")
    n = pread(fd, data, len, static_cast<off_t>(offset));
  else
    n = pwrite(fd, data, len, static_cast<off_t>(offset));
  if (n < 0) ThrowErrno(env, errno, op.c_str());
  return Napi::Number::New(env, static_cast<double>(n));
}

// ftruncate(fd, length).
static void Ftruncate(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 2, "ftruncate");
  int fd = FdArg(info, 0, "ftruncate", "fd");
  uint64_t length = U64Arg(info, 1, "ftruncate", "length");
  if (length > static_cast<uint64_t>(INT64_MAX)) throw ArgError(info.Env(), "ftruncate: length must be below 2^63", kArgValue);
  if (ftruncate(fd, static_cast<off_t>(length)) < 0) ThrowErrno(info.Env(), errno, "ftruncate");
}

void InitSystem(Napi::Env env, Napi::Object exports) {
  exports.Set("fileIo", Napi::Function::New(env, FileIo, "fileIo"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("openDevice", Napi::Function::New(env, OpenDevice, "openDevice"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("getApiVersion", Napi::Function::New(env, GetApiVersion, "getApiVersion"));
  napi_value check;
  napi_create_function(env, "checkExtension", NAPI_AUTO_LENGTH, CheckExtension, nullptr, &check);
  exports.Set("checkExtension", Napi::Value(env, check));
  exports.Set("checkExtensionBind", Napi::Function::New(env, CheckExtensionBind, "checkExtensionBind"));
  exports.Set("checkExtensions", Napi::Function::New(env, CheckExtensions, "checkExtensions"));
  exports.Set("createVm", Napi::Function::New(env, CreateVm, "createVm"));
  exports.Set("getVcpuMmapSize", Napi::Function::New(env, GetVcpuMmapSize, "getVcpuMmapSize"));
  exports.Set("getSupportedCpuid", Napi::Function::New(env, GetSupportedCpuid, "getSupportedCpuid"));
  exports.Set("fdCloexec", Napi::Function::New(env, FdCloexec, "fdCloexec"));
}

}  // namespace kvmgmem
