// A guest_memfd file (virt/kvm/guest_memfd.c): fallocate(2) with
// FALLOC_FL_KEEP_SIZE to allocate and FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE
// to discard, and fstat(2) for its size. read/write/ftruncate are refused by
// the kernel and are deliberately not offered; mmap lives in mmap.cc.
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>

#include "addon.h"

namespace kvmgmem {

// fallocate(fd, mode, offset, length). mode is passed through unchanged so
// tests can show which modes the kernel refuses (EOPNOTSUPP).
static void Fallocate(const Napi::CallbackInfo& info) {
  const char* fn = "fallocate";
  ExpectArgs(info, 4, fn);
  int fd = FdArg(info, 0, fn, "fd");
  uint32_t mode = U32Arg(info, 1, fn, "mode");
  uint64_t offset = U64Arg(info, 2, fn, "offset");
  uint64_t length = U64Arg(info, 3, fn, "length");
  if (fallocate(fd, static_cast<int>(mode), static_cast<off_t>(offset), static_cast<off_t>(length)) < 0)
    ThrowErrno(info.Env(), errno, "fallocate");
}

// fstat(fd) -> { size, mode, blocks, blksize, ino } (size of a guest_memfd is fixed at create).
static Napi::Value Fstat(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "fstat");
  int fd = FdArg(info, 0, "fstat", "fd");
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowErrno(info.Env(), errno, "fstat");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("size", Napi::Number::New(info.Env(), static_cast<double>(st.st_size)));
  o.Set("mode", Napi::Number::New(info.Env(), st.st_mode));
  o.Set("blocks", Napi::Number::New(info.Env(), static_cast<double>(st.st_blocks)));
  o.Set("blksize", Napi::Number::New(info.Env(), static_cast<double>(st.st_blksize)));
  o.Set("ino", Napi::Number::New(info.Env(), static_cast<double>(st.st_ino)));
  return o;
}

void InitGuestMemfd(Napi::Env env, Napi::Object exports) {
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("fstat", Napi::Function::New(env, Fstat, "fstat"));
}

}  // namespace kvmgmem
