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

struct Runner;

// One memory mapping handed to JavaScript. JavaScript holds a handle (an
// External) and views: external ArrayBuffers over parts of the mapping, each
// at most `maxView` bytes (Node refuses larger external buffers), so a
// mapping may be larger than any one ArrayBuffer. `refs` counts the handle
// and every view not yet finalized: the memory stays mapped while any of
// them can still reach it, unless munmap() ran first (it detaches the views
// it is given). `pins` counts runner threads that write into the mapping
// (kvm_run): no one unmaps it while one is pinned, not even environment
// teardown, which stops the runners first. `owner` is the environment whose
// `mappings` lists the record, or null once it is no longer listed.
// A reservation (PROT_NONE, made by reserve()) may hold MAP_FIXED mappings:
// each such child names its `parent` (and holds one of its refs), is not in
// `mappings`, and on unmap is replaced by PROT_NONE again instead of leaving
// a hole that the next mmap of anyone could take.
struct Mapping {
  void* addr;
  size_t length;
  bool unmapped;
  int refs;
  int pins;
  AddonData* owner;
  bool reservation = false;
  Mapping* parent = nullptr;
  std::vector<Mapping*> children = {};
};

// Per-environment state (main thread and each worker thread get their own).
// fds and mappings are recorded so an exiting worker thread releases what its
// JavaScript objects did not close; runner threads are recorded so teardown
// stops and joins them before anything they use goes away. `gmemFlags` has
// the create flags of every guest_memfd this environment created, so a
// mapping of one is checked against its flags (without INIT_SHARED every
// access raises SIGBUS).
struct AddonData {
  Napi::FunctionReference errorFactory;
  std::unordered_set<int> fds;
  std::unordered_map<int, uint64_t> gmemFlags;
  std::unordered_map<void*, Mapping*> mappings;
  std::unordered_set<Runner*> runners;
  size_t maxView = 0x80000000;  // replaced by buffer.constants.MAX_LENGTH at load
  ~AddonData();
};

// Releases one reference to a mapping; the last one unmaps it (unless a
// runner pins it or munmap() already did) and frees the record.
void UnrefMapping(Mapping* m);
// The live mapping that starts at `p` (a kvm_run page), or null.
Mapping* FindMapping(Napi::Env env, void* p);
// A runner thread starts or stops writing into `m`.
void PinMapping(Mapping* m);
void UnpinMapping(Mapping* m);
// Stops a runner thread and joins it (environment teardown).
void StopRunner(Runner* r);

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

// Errors that are not a failed syscall carry a `code`, as Node's own do
// and as the TypeScript layer's do: a TypeError for a bad argument
// (ERR_INVALID_ARG_TYPE for the wrong type, ERR_INVALID_ARG_VALUE for a
// value of the right type that is refused), a RangeError (ERR_OUT_OF_RANGE),
// or an Error with a code of this package.
inline constexpr const char* kArgType = "ERR_INVALID_ARG_TYPE";
inline constexpr const char* kArgValue = "ERR_INVALID_ARG_VALUE";
Napi::Error ArgError(Napi::Env env, const std::string& message, const char* code = kArgType);
Napi::Error ArgRangeError(Napi::Env env, const std::string& message);
Napi::Error CodedError(Napi::Env env, const std::string& message, const char* code);

// Argument checks. `fn` names the binding function in the message.
void ExpectArgs(const Napi::CallbackInfo& info, size_t n, const char* fn);
int FdArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
// Accepts a non-negative safe-integer Number or a BigInt in [0, 2^64).
uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
Napi::Value U64Value(Napi::Env env, uint64_t v);

// Records an fd this environment now owns, or forgets one it closed.
void TrackFd(Napi::Env env, int fd);
void TrackGuestMemfd(Napi::Env env, int fd, uint64_t flags);
void UntrackFd(Napi::Env env, int fd);

void InitSystem(Napi::Env env, Napi::Object exports);
void InitVm(Napi::Env env, Napi::Object exports);
void InitGuestMemfd(Napi::Env env, Napi::Object exports);
void InitMmap(Napi::Env env, Napi::Object exports);
void InitVcpu(Napi::Env env, Napi::Object exports);

}  // namespace kvmgmem
