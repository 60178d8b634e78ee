// Public API of the test VM tool (tools/testvm): boot the private-memory test
// kernel under QEMU TCG and run a command inside it.
export {
  runInTestVm,
  buildCommandScript,
  guestEnvironment,
  shellQuote,
  checkOverlayDirs,
  qemuArgs,
  findQemu,
  findBusybox,
  ConsoleFilter,
  TestVmTimeoutError,
  TestVmCrashError,
  TestVmToolMissingError,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_MEMORY_MIB,
  DEFAULT_CPUS,
  GUEST_WORK_DIR,
  GUEST_HOST_TMP_DIR,
  type TestVmOptions,
  type TestVmResult,
} from './vm.js';
export {
  resolveKernel,
  verifyChecksum,
  listImages,
  sha256File,
  KernelNotFoundError,
  KernelChecksumError,
  KERNEL_ENV_VAR,
  BUILD_KERNEL_COMMAND,
  type KernelLookupOptions,
  type ResolvedKernel,
  type KernelSource,
} from './kernel.js';
export { defaultCacheDir, findRepoRoot, sharedKernelDirs } from './paths.js';
export {
  buildKernel,
  parseConfigFragment,
  checkConfigAgainstFragment,
  type BuildKernelOptions,
  type BuildKernelResult,
  type ConfigMismatch,
} from './build-kernel.js';
