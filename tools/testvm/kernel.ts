// Which test kernel to boot: explicit option, $KVM_GMEM_TESTVM_KERNEL, the
// prebuilt image beside the repository, then the cached build.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { defaultCacheDir, findRepoRoot, sharedKernelDirs } from './paths.js';

export const KERNEL_ENV_VAR = 'KVM_GMEM_TESTVM_KERNEL';
export const BUILD_KERNEL_COMMAND = 'node dist/tools/testvm/cli.js build-kernel';

export type KernelSource = 'option' | 'env' | 'shared' | 'cache';

export interface KernelLookupOptions {
  /** Explicit image; used as is (must exist), no fallback. */
  kernel?: string;
  /** Environment to read KVM_GMEM_TESTVM_KERNEL, XDG_CACHE_HOME and HOME from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Repository root; default: found from this module's location. */
  repoRoot?: string;
  /** Prebuilt-image directories; default `<repoRoot>/../shared/testvm` (and its real-path twin). */
  sharedDirs?: string[];
  /** Build cache; default `$XDG_CACHE_HOME/kvm-gmem/testvm` or `~/.cache/kvm-gmem/testvm`. */
  cacheDir?: string;
}

export interface ResolvedKernel {
  path: string;
  source: KernelSource;
  /** One sentence: why this image was chosen. */
  reason: string;
  /** 'verified': matched its .sha256 file; 'no-checksum-file': there was none. */
  checksum: 'verified' | 'no-checksum-file';
  /** Every place consulted, in order, with what was found there. */
  looked: string[];
}

export class KernelNotFoundError extends Error {
  readonly looked: string[];
  constructor(looked: string[], detail?: string) {
    super(
      `no test VM kernel found${detail ? ` (${detail})` : ''}; build one with \`${BUILD_KERNEL_COMMAND}\`\n` +
        `Looked at, in order:\n` +
        looked.map((l) => `  - ${l}`).join('\n') +
        `\nThe build (about 15 min on 2 cores, root for apt-get) puts bzImage-<release>-gmem into $XDG_CACHE_HOME/kvm-gmem/testvm (default ~/.cache/kvm-gmem/testvm);` +
        ` or point ${KERNEL_ENV_VAR} at a bzImage built from tools/testvm/gmem.config.`,
    );
    this.name = 'KernelNotFoundError';
    this.looked = looked;
  }
}

export class KernelChecksumError extends Error {
  constructor(
    readonly image: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`kernel image ${image} does not match ${image}.sha256 (expected ${expected}, got ${actual}); the copy is damaged or the checksum file is stale`);
    this.name = 'KernelChecksumError';
  }
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

// Checksums already verified in this process, keyed by path + size + mtime.
const verified = new Map<string, string>();

/**
 * Checks `image` against `image.sha256` (sha256sum format: "<hex>  <name>")
 * when that file exists. Throws KernelChecksumError on a mismatch.
 */
export async function verifyChecksum(image: string): Promise<'verified' | 'no-checksum-file'> {
  let text: string;
  try {
    text = await readFile(`${image}.sha256`, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'no-checksum-file';
    throw e;
  }
  const expected = /^\s*([0-9a-fA-F]{64})\b/.exec(text)?.[1]?.toLowerCase();
  if (!expected) throw new Error(`${image}.sha256 does not start with a sha256 hex digest`);
  const st = await stat(image);
  const key = `${image}\0${st.size}\0${st.mtimeMs}`;
  const actual = verified.get(key) ?? (await sha256File(image));
  if (actual !== expected) throw new KernelChecksumError(image, expected, actual);
  verified.set(key, actual);
  return 'verified';
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

/** `bzImage-*` files in `dir` (not their .sha256), newest version first. */
export async function listImages(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const images: string[] = [];
  for (const n of names) {
    if (!n.startsWith('bzImage-') || n.endsWith('.sha256') || n.endsWith('.tmp')) continue;
    if (await isFile(path.join(dir, n))) images.push(n);
  }
  images.sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  return images.map((n) => path.join(dir, n));
}

/** Picks the kernel to boot; throws KernelNotFoundError naming every place looked at. */
export async function resolveKernel(opts: KernelLookupOptions = {}): Promise<ResolvedKernel> {
  const env = opts.env ?? process.env;
  const looked: string[] = [];

  const explicit = async (p: string, source: 'option' | 'env', what: string): Promise<ResolvedKernel> => {
    const abs = path.resolve(p);
    if (!(await isFile(abs))) {
      looked.push(`${what}: ${abs} (missing)`);
      throw new KernelNotFoundError(looked, `${what} names a file that does not exist: ${abs}`);
    }
    const checksum = await verifyChecksum(abs);
    looked.push(`${what}: ${abs} (used)`);
    return { path: abs, source, reason: `given by ${what}`, checksum, looked };
  };

  if (opts.kernel) return explicit(opts.kernel, 'option', 'the kernel option (--kernel)');
  looked.push('the kernel option (--kernel): not given');

  const fromEnv = env[KERNEL_ENV_VAR];
  if (fromEnv) return explicit(fromEnv, 'env', `$${KERNEL_ENV_VAR}`);
  looked.push(`$${KERNEL_ENV_VAR}: not set`);

  let sharedDirs = opts.sharedDirs;
  if (!sharedDirs) {
    let root = opts.repoRoot;
    if (!root) {
      try {
        root = findRepoRoot();
      } catch {
        root = undefined;
      }
    }
    sharedDirs = root ? sharedKernelDirs(root) : [];
  }
  for (const dir of sharedDirs) {
    const images = await listImages(dir);
    if (images.length === 0) {
      looked.push(`${path.join(dir, 'bzImage-*')}: none`);
      continue;
    }
    const image = images[0]!;
    const checksum = await verifyChecksum(image);
    looked.push(`${path.join(dir, 'bzImage-*')}: ${image} (used)`);
    return { path: image, source: 'shared', reason: `prebuilt image beside the repository (${dir})`, checksum, looked };
  }

  const cacheDir = opts.cacheDir ?? defaultCacheDir(env);
  const cached = await listImages(cacheDir);
  if (cached.length > 0) {
    const image = cached[0]!;
    const checksum = await verifyChecksum(image);
    looked.push(`${path.join(cacheDir, 'bzImage-*')}: ${image} (used)`);
    return { path: image, source: 'cache', reason: `cached build in ${cacheDir}`, checksum, looked };
  }
  looked.push(`${path.join(cacheDir, 'bzImage-*')}: none`);
  throw new KernelNotFoundError(looked);
}
