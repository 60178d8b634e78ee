// Module entry point and shared helpers: argument checking, errno -> JS error
// (through the TypeScript KvmError class handed over once at load), and the
// per-environment record of fds and mappings released when a worker exits.
#include "addon.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <string>

namespace kvmgmem {

AddonData::~AddonData() {
  // Environment teardown (a worker thread exiting, or process exit). Runner
  // threads first: one may be inside KVM_RUN and write immediate_exit into a
  // kvm_run page that is about to be unmapped. Then close what JavaScript
  // left open. Finalizers of the handles and views may still run later; they
  // see `unmapped` and `owner == nullptr` and only free the record.
  for (Runner* r : runners) StopRunner(r);
  runners.clear();
  for (auto& [addr, m] : mappings) {
    for (Mapping* c : m->children) {  // gone with their reservation
      c->unmapped = true;
      c->owner = nullptr;
    }
    munmap(m->addr, m->length);
    m->unmapped = true;
    m->owner = nullptr;
  }
  mappings.clear();
  for (int fd : fds) close(fd);
}

AddonData& Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

static Napi::Error WithCode(Napi::Error e, const char* code) {
  e.Set("code", Napi::String::New(e.Env(), code));
  return e;
}

Napi::Error ArgError(Napi::Env env, const std::string& message, const char* code) {
  return WithCode(Napi::TypeError::New(env, message), code);
}

Napi::Error ArgRangeError(Napi::Env env, const std::string& message) {
  return WithCode(Napi::RangeError::New(env, message), "ERR_OUT_OF_RANGE");
}

Napi::Error CodedError(Napi::Env env, const std::string& message, const char* code) {
  return WithCode(Napi::Error::New(env, message), code);
}

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  AddonData& d = Data(env);
  if (d.errorFactory.IsEmpty()) {
    throw CodedError(env, std::string(syscall) + " failed: errno " + std::to_string(err), "ERR_KVM_INTERNAL");
  }
  Napi::Value e = d.errorFactory.Call({Napi::Number::New(env, err), Napi::String::New(env, syscall)});
  throw Napi::Error(env, e);
}

napi_value ThrowErrnoRaw(napi_env env, int err, const char* syscall) {
  AddonData* d = nullptr;
  napi_get_instance_data(env, reinterpret_cast<void**>(&d));
  napi_value factory = nullptr, args[2], result = nullptr;
  if (d == nullptr || d->errorFactory.IsEmpty() || napi_get_reference_value(env, d->errorFactory, &factory) != napi_ok) {
    napi_throw_error(env, "ERR_KVM_INTERNAL", (std::string(syscall) + " failed: errno " + std::to_string(err)).c_str());
    return nullptr;
  }
  napi_create_int32(env, err, &args[0]);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &args[1]);
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (napi_call_function(env, undefined, factory, 2, args, &result) == napi_ok) napi_throw(env, result);
  return nullptr;
}

bool RawSmallInt(napi_env env, napi_value v, int32_t* out) {
  double d;
  // The truncating cast compares equal only for integers; no floor() call
  // (a libm call without SSE4.1 as baseline) on every hot-path argument.
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d <= INT32_MAX) || static_cast<int32_t>(d) != d) return false;
  *out = static_cast<int32_t>(d);
  return true;
}

napi_value RawInt32(napi_env env, int32_t v) {
  napi_value out = nullptr;
  napi_create_int32(env, v, &out);
  return out;
}

static std::string Where(const char* fn, const char* name) { return std::string(fn) + ": argument '" + name + "'"; }

void ExpectArgs(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() != n) {
    throw ArgError(info.Env(), std::string(fn) + ": expected " + std::to_string(n) + " arguments, got " + std::to_string(info.Length()));
  }
}

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= INT32_MAX && std::floor(d) == d) return static_cast<int>(d);
  }
  throw ArgError(info.Env(), Where(fn, name) + " must be a file descriptor (integer 0..2^31-1)", v.IsNumber() ? kArgValue : kArgType);
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= UINT32_MAX && std::floor(d) == d) return static_cast<uint32_t>(d);
  }
  throw ArgError(info.Env(), Where(fn, name) + " must be an integer 0..2^32-1", v.IsNumber() ? kArgValue : kArgType);
}

uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
  } else if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return u;
  }
  throw ArgError(info.Env(), Where(fn, name) + " must be a non-negative safe integer or a bigint below 2^64",
                 v.IsNumber() || v.IsBigInt() ? kArgValue : kArgType);
}

Napi::Value U64Value(Napi::Env env, uint64_t v) {
  if (v <= 9007199254740991ULL) return Napi::Number::New(env, static_cast<double>(v));
  return Napi::BigInt::New(env, v);
}

void TrackFd(Napi::Env env, int fd) { Data(env).fds.insert(fd); }
void UntrackFd(Napi::Env env, int fd) {
  AddonData& d = Data(env);
  d.fds.erase(fd);
  d.gmemFlags.erase(fd);
}

void TrackGuestMemfd(Napi::Env env, int fd, uint64_t flags) {
  AddonData& d = Data(env);
  d.fds.insert(fd);
  d.gmemFlags[fd] = flags;
}

// setErrorFactory(fn): fn(errno, syscall) returns the Error to throw.
static void SetErrorFactory(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "setErrorFactory");
  if (!info[0].IsFunction()) throw ArgError(info.Env(), "setErrorFactory: expected a function");
  Data(info.Env()).errorFactory = Napi::Persistent(info[0].As<Napi::Function>());
}

// setMaxView(n): the largest external ArrayBuffer this Node makes
// (buffer.constants.MAX_LENGTH); views of a mapping are at most this long.
static void SetMaxView(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "setMaxView");
  uint64_t n = U64Arg(info, 0, "setMaxView", "n");
  if (n < 4096) throw ArgRangeError(info.Env(), "setMaxView: at least one page");
  Data(info.Env()).maxView = static_cast<size_t>(n);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory, "setErrorFactory"));
  exports.Set("setMaxView", Napi::Function::New(env, SetMaxView, "setMaxView"));
  InitSystem(env, exports);
  InitVm(env, exports);
  InitGuestMemfd(env, exports);
  InitMmap(env, exports);
  InitVcpu(env, exports);
  return exports;
}

}  // namespace kvmgmem

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return kvmgmem::Init(env, exports); }

NODE_API_MODULE(kvm_gmem, InitModule)
