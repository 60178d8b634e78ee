// Shared plumbing for the native layer: per-environment state, argument
// checks that turn misuse into a TypeError instead of a crash, and the one
// place where a failed syscall becomes a JavaScript error.
#pragma once

#include <napi.h>

#include <cstdint>
#include <unordered_map>
#include <unordered_set>

namespace kvmgmem {

struct AddonData;

// One memory mapping handed to JavaScript as an external ArrayBuffer. The
// record outlives the mapping: munmap() marks it unmapped, the ArrayBuffer's
// finalizer frees it, so neither order can unmap twice. `owner` is the
// environment whose `mappings` lists the record, or null once it is no longer
// listed (unmapped, or the environment was torn down first).
struct Mapping {
  void* addr;
  size_t length;
  bool unmapped;
  AddonData* owner;
};

// Per-environment state (main thread and each worker thread get their own).
// fds and mappings are recorded so an exiting worker thread releases what its
// JavaScript objects did not close.
struct AddonData {
  Napi::FunctionReference errorFactory;
  std::unordered_set<int> fds;
  std::unordered_map<void*, Mapping*> mappings;
  ~AddonData();
};

AddonData& Data(Napi::Env env);

// Builds the error with the TypeScript class registered by setErrorFactory
// and throws it. `err` must be the errno captured right after the syscall.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall);

// The same for plain Node-API callbacks (the hot paths that skip
// node-addon-api's wrappers): throws the factory's error and returns nullptr.
napi_value ThrowErrnoRaw(napi_env env, int err, const char* syscall);
// Reads a non-negative integer below 2^31 (an fd or a small id); false if not.
bool RawSmallInt(napi_env env, napi_value v, int32_t* out);
// An int32 as a JS number (plain Node-API, for the hot paths).
napi_value RawInt32(napi_env env, int32_t v);

// Argument checks. `fn` names the binding function in the message.
void ExpectArgs(const Napi::CallbackInfo& info, size_t n, const char* fn);
int FdArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
// Accepts a non-negative safe-integer Number or a BigInt in [0, 2^64).
uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
Napi::Value U64Value(Napi::Env env, uint64_t v);

// Records an fd this environment now owns, or forgets one it closed.
void TrackFd(Napi::Env env, int fd);
void UntrackFd(Napi::Env env, int fd);

void InitSystem(Napi::Env env, Napi::Object exports);
void InitVm(Napi::Env env, Napi::Object exports);
void InitGuestMemfd(Napi::Env env, Napi::Object exports);
void InitMmap(Napi::Env env, Napi::Object exports);
void InitVcpu(Napi::Env env, Napi::Object exports);

}  // namespace kvmgmem
