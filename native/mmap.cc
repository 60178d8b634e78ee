// Memory mappings handed to JavaScript: mmap(2), munmap(2), madvise(2).
// A mapping becomes an external ArrayBuffer. munmap() detaches the
// ArrayBuffer before unmapping, so every view of it reads as length 0
// afterwards instead of touching unmapped memory; the ArrayBuffer's
// finalizer unmaps only what was never unmapped explicitly.
#include <sys/mman.h>

#include <cerrno>

#include "addon.h"

namespace kvmgmem {

// Runs when the ArrayBuffer is collected, or at environment teardown (in
// either order with ~AddonData): drops the record from the environment's list
// before freeing it, so the teardown never touches a freed record.
static void FinalizeMapping(Napi::Env, void*, Mapping* m) {
  if (m->owner != nullptr) {
    auto it = m->owner->mappings.find(m->addr);
    if (it != m->owner->mappings.end() && it->second == m) m->owner->mappings.erase(it);
  }
  if (!m->unmapped) munmap(m->addr, m->length);
  delete m;
}

// mmap(fd | -1, length, prot, flags, offset) -> { buffer, address }
static Napi::Value Mmap(const Napi::CallbackInfo& info) {
  const char* fn = "mmap";
  ExpectArgs(info, 5, fn);
  Napi::Env env = info.Env();
  int fd = -1;
  if (!(info[0].IsNumber() && info[0].As<Napi::Number>().Int32Value() == -1 &&
        info[0].As<Napi::Number>().DoubleValue() == -1))
    fd = FdArg(info, 0, fn, "fd");
  uint64_t length = U64Arg(info, 1, fn, "length");
  uint32_t prot = U32Arg(info, 2, fn, "prot");
  uint32_t flags = U32Arg(info, 3, fn, "flags");
  uint64_t offset = U64Arg(info, 4, fn, "offset");
  if (flags & MAP_FIXED) throw Napi::TypeError::New(env, "mmap: MAP_FIXED is not allowed (it could replace live memory)");
  void* p = mmap(nullptr, length, static_cast<int>(prot), static_cast<int>(flags), fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  auto* m = new Mapping{p, static_cast<size_t>(length), false, &Data(env)};
  Data(env).mappings[p] = m;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, p, length, FinalizeMapping, m);
  Napi::Object o = Napi::Object::New(env);
  o.Set("buffer", ab);
  o.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p))));
  return o;
}

static Mapping* MappingArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (!info[i].IsArrayBuffer()) throw Napi::TypeError::New(info.Env(), std::string(fn) + ": expected a mapping's ArrayBuffer");
  Napi::ArrayBuffer ab = info[i].As<Napi::ArrayBuffer>();
  auto& maps = Data(info.Env()).mappings;
  auto it = maps.find(ab.Data());
  if (ab.Data() == nullptr || it == maps.end() || it->second->length != ab.ByteLength())
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": the ArrayBuffer is not a live mapping");
  return it->second;
}

// munmap(buffer): detach every view first, then unmap.
static void Munmap(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "munmap");
  Mapping* m = MappingArg(info, 0, "munmap");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  Data(info.Env()).mappings.erase(m->addr);
  m->owner = nullptr;
  ab.Detach();
  m->unmapped = true;
  if (munmap(m->addr, m->length) < 0) ThrowErrno(info.Env(), errno, "munmap");
}

// madvise(buffer, offset, length, advice), e.g. MADV_REMOVE to drop the
// shared copy of a page that became private.
static void Madvise(const Napi::CallbackInfo& info) {
  const char* fn = "madvise";
  ExpectArgs(info, 4, fn);
  Mapping* m = MappingArg(info, 0, fn);
  uint64_t offset = U64Arg(info, 1, fn, "offset");
  uint64_t length = U64Arg(info, 2, fn, "length");
  uint32_t advice = U32Arg(info, 3, fn, "advice");
  if (offset > m->length || length > m->length - offset)
    throw Napi::RangeError::New(info.Env(), "madvise: range outside the mapping");
  if (madvise(static_cast<char*>(m->addr) + offset, length, static_cast<int>(advice)) < 0)
    ThrowErrno(info.Env(), errno, "madvise");
}

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
}

}  // namespace kvmgmem
