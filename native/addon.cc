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
  // Environment teardown (a worker thread exiting, or process exit): close
  // what JavaScript left open. Finalizers of the ArrayBuffers may still run
  // later; they see `unmapped` and only free the record. (A finalizer that
  // ran earlier already removed its record from `mappings`.)
  for (auto& [addr, m] : mappings) {
    munmap(m->addr, m->length);
    m->unmapped = true;
    m->owner = nullptr;
  }
  for (int fd : fds) close(fd);
}

AddonData& Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  AddonData& d = Data(env);
  if (d.errorFactory.IsEmpty()) {
    throw Napi::Error::New(env, std::string(syscall) + " failed: errno " + std::to_string(err));
  }
  Napi::Value e = d.errorFactory.Call({Napi::Number::New(env, err), Napi::String::New(env, syscall)});
  throw Napi::Error(env, e);
}

napi_value ThrowErrnoRaw(napi_env env, int err, const char* syscall) {
  AddonData* d = nullptr;
  napi_get_instance_data(env, reinterpret_cast<void**>(&d));
  napi_value factory = nullptr, args[2], result = nullptr;
  if (d == nullptr || d->errorFactory.IsEmpty() || napi_get_reference_value(env, d->errorFactory, &factory) != napi_ok) {
    napi_throw_error(env, nullptr, (std::string(syscall) + " failed: errno " + std::to_string(err)).c_str());
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

static std::string Where(const char* fn, const char* name) {
  return std::string(fn) + ": argument '" + name + "'";
}

void ExpectArgs(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() != n) {
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": expected " + std::to_string(n) +
                                               " arguments, got " + std::to_string(info.Length()));
  }
}

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= INT32_MAX && std::floor(d) == d) return static_cast<int>(d);
  }
  throw Napi::TypeError::New(info.Env(), Where(fn, name) + " must be a file descriptor (integer 0..2^31-1)");
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= UINT32_MAX && std::floor(d) == d) return static_cast<uint32_t>(d);
  }
  throw Napi::TypeError::New(info.Env(), Where(fn, name) + " must be an integer 0..2^32-1");
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
  throw Napi::TypeError::New(info.Env(),
                             Where(fn, name) + " must be a non-negative safe integer or a bigint below 2^64");
}

Napi::Value U64Value(Napi::Env env, uint64_t v) {
  if (v <= 9007199254740991ULL) return Napi::Number::New(env, static_cast<double>(v));
  return Napi::BigInt::New(env, v);
}

void TrackFd(Napi::Env env, int fd) { Data(env).fds.insert(fd); }
void UntrackFd(Napi::Env env, int fd) { Data(env).fds.erase(fd); }

// setErrorFactory(fn): fn(errno, syscall) returns the Error to throw.
static void SetErrorFactory(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "setErrorFactory");
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorFactory: expected a function");
  Data(info.Env()).errorFactory = Napi::Persistent(info[0].As<Napi::Function>());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory, "setErrorFactory"));
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
