// Where the test VM tool finds its own files, the repository and its caches.
import { accessSync, constants, existsSync, realpathSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * The repository root: the nearest ancestor of this module (tools/testvm/ when
 * run from source, dist/tools/testvm/ when compiled) holding package.json and
 * tools/testvm/init.sh.
 */
export function findRepoRoot(start: string = here): string {
  let dir = path.resolve(start);
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'tools', 'testvm', 'init.sh'))) {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new Error(`cannot find the kvm-gmem repository root (package.json + tools/testvm/init.sh) above ${start}`);
    }
    dir = parent;
  }
}

/** tools/testvm/ in the repository (source files that tsc does not copy: init.sh, gmem.config). */
export function toolSourceDir(repoRoot: string = findRepoRoot()): string {
  return path.join(repoRoot, 'tools', 'testvm');
}

/** `$XDG_CACHE_HOME/kvm-gmem/testvm`, default `~/.cache/kvm-gmem/testvm`. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  // The XDG spec says a relative value is invalid and must be ignored.
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(env.HOME || homedir(), '.cache');
  return path.join(base, 'kvm-gmem', 'testvm');
}

/**
 * Directories the tool looks in for prebuilt images, in order: `<repo>/../shared/testvm` (the default 6.12 image)
 * and its `matrix/` subfolder (the other releases), then the same two via the repository's real path when that differs.
 */
export function sharedKernelDirs(repoRoot: string): string[] {
  const bases = [path.resolve(repoRoot, '..', 'shared', 'testvm')];
  try {
    bases.push(path.resolve(realpathSync(repoRoot), '..', 'shared', 'testvm'));
  } catch {
    // repoRoot missing: the first entries still name the places looked at
  }
  return [...new Set(bases.flatMap((b) => [b, path.join(b, 'matrix')]))];
}

/** The directories of $PATH plus the standard system ones, in that order, without duplicates. */
export function searchPath(env: NodeJS.ProcessEnv = process.env): string[] {
  const std = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  const fromEnv = (env.PATH ?? '').split(':').filter((d) => d && path.isAbsolute(d));
  return [...new Set([...fromEnv, ...std])];
}

/** First executable named `name` in `dirs`, or undefined. */
export function findExecutable(name: string, dirs: string[]): string | undefined {
  for (const dir of dirs) {
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}
