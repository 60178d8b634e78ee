// One fuzz child process: `node dist/tools/fuzz/child.js '<ChildConfig JSON>'`,
// started by driver.ts. It makes `calls` random calls from its seed and
// reports on fd 3, one JSON line per event, written synchronously before and
// after each call so that the last line the driver read names the call that
// crashed or hung the process:
//   {t:'ready'}, {t:'call', i, name, desc}, {t:'res', i, ok, cls, code},
//   {t:'wcall', ...} (a worker thread's call), {t:'finding', kind, ...},
//   {t:'done', ...counts}.
// Checks after each call (checks.ts): the error classes, the memslot tables
// of the VMs the call touched against the kernel, close-on-exec of new fds,
// vCPUs that replaced a closed one (a redirected call changes them), fds and
// mappings around a worker thread; every 100 calls and at the end all VMs
// fully and every KVM fd's FD_CLOEXEC; at the end, after closing
// everything, fds and shared mappings against the baseline.
import { ftruncateSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Kvm, Mapping, raw, type Vm, VmType, type VmTypeName } from '../../lib/index.js';
import { bindingOverlapErrno } from '../../lib/kvm/kernel-behaviour.js';
import { classify, cloexecViolations, diffSnapshots, probeVm, snapshot, type Verdict } from './checks.js';
import type { ChildConfig } from './driver.js';
import { lowerNofile } from './hazards.js';
import { Ctx, nextCall, show, State, THREAD_SCRIPT } from './ops.js';
import { Rng } from './prng.js';

const OUT = 3;
const FULL_CHECK_EVERY = 100;
const cfg = JSON.parse(process.argv[2] ?? '{}') as ChildConfig;

const pause = new Int32Array(new SharedArrayBuffer(4));
function emit(o: Record<string, unknown>): void {
  const line = Buffer.from(JSON.stringify(o, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}n` : v)) + '\n');
  for (let off = 0; off < line.length;) {
    try {
      off += writeSync(OUT, line, off);
    } catch (e) {
      // The driver's end of the pipe is non-blocking: wait for it to drain.
      if ((e as { code?: string }).code !== 'EAGAIN') throw e;
      Atomics.wait(pause, 0, 0, 1);
    }
  }
}

let current = -1;
let currentName = '';
let currentDesc = '';
const counts = { calls: 0, ok: 0, typed: 0, undocumented: 0, divergences: 0, redirects: 0, wrong: 0, cloexec: 0, leaks: 0, uncaught: 0 };
const codes = new Map<string, number>();

function finding(kind: string, detail: Record<string, unknown>): void {
  emit({ t: 'finding', kind, i: current, name: currentName, desc: currentDesc, ...detail });
}

// An exception nobody can catch (a package timer, a callback on another
// thread) would end a normal program: report it and go on.
process.on('uncaughtException', (e) => {
  counts.uncaught++;
  const v = classify(e);
  finding('uncaught', { cls: v.cls, message: v.message, stack: (e as Error)?.stack?.split('\n').slice(0, 6).join('\n') });
});
process.on('unhandledRejection', (e) => {
  counts.uncaught++;
  const v = classify(e);
  finding('uncaught', { cls: v.cls, message: v.message, rejection: true, stack: (e as Error)?.stack?.split('\n').slice(0, 6).join('\n') });
});

function note(v: Verdict): void {
  const key = `${v.cls}${v.code ? ` ${v.code}` : ''}`;
  codes.set(key, (codes.get(key) ?? 0) + 1);
}

function fdOf(o: object): number | null {
  const d = Object.getOwnPropertyDescriptor(o, 'fd')?.value as unknown;
  const x = (typeof d === 'object' && d !== null ? d : o) as { closed?: boolean; fd?: number };
  try {
    return typeof x.closed === 'boolean' && !x.closed && typeof x.fd === 'number' ? x.fd : null;
  } catch {
    return null;
  }
}

function hasCloexec(fd: number): boolean | null {
  try {
    const m = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m === null ? null : (parseInt(m[1] as string, 8) & 0o2000000) !== 0;
  } catch {
    return null;
  }
}

async function main(): Promise<void> {
  // ---- set-up: everything the baseline must include ----
  if (cfg.hazards.workers) {
    // The first Worker sets up process-wide state (fds) that stays.
    await new Promise((resolve) => new Worker('', { eval: true }).once('exit', resolve));
  }
  // Harness files for 'fd' backings and Mapping.sharedFile: 0 bytes, 3 pages
  // and 1 MiB + 1 page, unlinked at once. Never resized (a shrunk file would
  // make a SIGBUS the harness's doing).
  const files = [0, 3 * 4096, (1 << 20) + 4096].map((size, i) => {
    const path = join(tmpdir(), `kvm-gmem-fuzz-${process.pid}-${i}`);
    const fd = openSync(path, 'w+');
    ftruncateSync(fd, size);
    unlinkSync(path);
    return { fd, size };
  });
  const probe = Mapping.anonymousShared(4096);
  // The package's one process-lifetime fd (the guest_memfd helper thread's
  // socket) comes with the first KVM_CREATE_GUEST_MEMFD the addon issues,
  // whatever the kernel answers: issued once here so it is part of the
  // baseline, not a leak. Through the raw layer, because a VM without
  // guest_memfd (6.12's default VM, anything on 6.1) has the package's rules
  // refuse before the addon is called, and the fuzz calls reach the addon
  // later on another VM type.
  // The same /dev/kvm also answers, per VM type, which errno a bound
  // guest_memfd page gets when bound again (the table check needs it).
  const overlapErrno: Partial<Record<VmTypeName, number>> = {};
  try {
    const kvm = Kvm.open();
    try {
      const vm = kvm.createVm();
      try {
        raw.createGuestMemfd(vm, { size: 4096 }).close();
      } catch {
        // refused by this kernel: the helper has started all the same
      }
      vm.close();
      for (const type of Object.keys(VmType) as VmTypeName[]) overlapErrno[type] = bindingOverlapErrno(kvm.fd, kvm.path, type).errno;
    } finally {
      kvm.close();
    }
  } catch {
    // no KVM here: the campaign reports that itself
  }
  const nofile = cfg.nofileHeadroom !== null ? lowerNofile(cfg.nofileHeadroom) : null;
  const baseline = snapshot();
  if (baseline === null) throw new Error('cannot list /proc/self/fd for the baseline');
  const traceFds = process.env.FUZZ_TRACE_FDS === '1';
  let traced = baseline;
  const st = new State(files, probe.address);
  const env = { probeAddr: probe.address, usedIds: st.usedIds, overlapErrno };
  const rng = new Rng(cfg.seed);
  const exclude = cfg.excludeOps ? new RegExp(cfg.excludeOps) : null;
  emit({ t: 'ready', pid: process.pid, fds: baseline.fds.size, nofile, asBytes: cfg.asBytes });

  const probeAll = (full: boolean): void => {
    for (const vm of st.live(st.vms)) {
      for (const m of probeVm(vm, env, full)) {
        counts.divergences++;
        finding('divergence', { detail: m, full });
      }
    }
  };

  // ---- the calls ----
  for (let i = 0; i < cfg.calls; i++) {
    if (cfg.deadline !== null && Date.now() > cfg.deadline) break;
    const c = new Ctx(rng, st, cfg.hazards, {
      inWorker: false,
      outFd: OUT,
      threadScript: THREAD_SCRIPT,
      addressSpaceLimited: cfg.asBytes !== null,
      nofileLimited: cfg.nofileHeadroom !== null,
    });
    let call: ReturnType<typeof nextCall>;
    try {
      call = nextCall(c, exclude);
    } catch (e) {
      // A bug of the harness, not of the package: stop loudly (exit 3).
      emit({ t: 'harness-error', i, message: String(e), stack: (e as Error)?.stack });
      process.exit(3);
    }
    current = i;
    currentName = call.name;
    currentDesc = call.desc;
    emit({ t: 'call', i, name: call.name, desc: call.desc });
    const before = c.workerCall ? snapshot() : null;
    const t0 = performance.now();
    let failed = false;
    let error: unknown;
    let result: unknown;
    try {
      result = call.run();
      if (result instanceof Promise) result = await result;
    } catch (e) {
      failed = true;
      error = e;
    }
    await Promise.allSettled(c.pending);
    const callMs = performance.now() - t0;
    counts.calls++;

    // 1. Error classes: the call's own and its secondary calls'.
    let verdict: Verdict | null = null;
    if (failed) {
      verdict = classify(error);
      note(verdict);
      if (verdict.documented) counts.typed++;
      else {
        counts.undocumented++;
        finding('undocumented', {
          cls: verdict.cls,
          why: verdict.why,
          message: verdict.message,
          stack: (error as Error)?.stack?.split('\n').slice(0, 8).join('\n'),
        });
      }
    } else counts.ok++;
    for (const o of c.observed) {
      const v = classify(o.error);
      note(v);
      if (!v.documented) {
        counts.undocumented++;
        finding('undocumented', {
          cls: v.cls,
          why: v.why,
          message: v.message,
          during: o.label,
          stack: (o.error as Error)?.stack?.split('\n').slice(0, 8).join('\n'),
        });
      }
    }
    // 2. Every fd made by the call is close-on-exec.
    for (const o of c.created) {
      const fd = fdOf(o);
      if (fd !== null && hasCloexec(fd) === false) {
        counts.cloexec++;
        finding('cloexec', { detail: `${st.name(o)} (fd ${fd}) has no FD_CLOEXEC` });
      }
    }
    // 3. Oracles.
    for (const w of c.wrong) {
      counts.wrong++;
      finding('wrong-result', { detail: w });
    }
    // 4. A vCPU that took a closed one's fd number must not have been touched by the call.
    for (const r of c.replacements) {
      if (r.vcpu.closed || r.vcpu.running) continue;
      const regs = r.vcpu.getRegs();
      const sregs = r.vcpu.getSregs();
      const changed = [
        ...Object.keys(r.regs).filter((k) => (r.regs as Record<string, bigint>)[k] !== (regs as Record<string, bigint>)[k]),
        ...(JSON.stringify(sregs, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)) !==
        JSON.stringify(r.sregs, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))
          ? ['sregs']
          : []),
      ];
      if (changed.length > 0) {
        counts.redirects++;
        finding('redirect', { detail: `${r.desc}: its ${changed.join(', ')} changed during the call (the call on the closed vCPU reached it)` });
      }
    }
    // 5. The memslot tables of the VMs this call touched, against the kernel.
    const full = (i + 1) % FULL_CHECK_EVERY === 0;
    if (full) {
      probeAll(true);
      for (const v of cloexecViolations()) {
        counts.cloexec++;
        finding('cloexec', { detail: `${v} has no FD_CLOEXEC` });
      }
    } else {
      for (const vm of c.touched as Set<Vm>) {
        for (const m of probeVm(vm, env, false)) {
          counts.divergences++;
          finding('divergence', { detail: m });
        }
      }
    }
    // 6. A worker thread releases what it had when it ends.
    const after = before === null ? null : snapshot();
    if (before !== null && after !== null) {
      const d = diffSnapshots(before, after);
      if (d.length > 0) {
        counts.leaks++;
        finding('leak', { detail: `after the worker thread exited: ${d.join('; ')}`, result: show(result) });
      }
    }
    emit({
      t: 'res',
      i,
      ok: !failed,
      documented: verdict?.documented ?? true,
      cls: verdict?.cls,
      code: verdict?.code,
      ms: Math.round(callMs * 10) / 10,
      checkMs: Math.round((performance.now() - t0 - callMs) * 10) / 10,
    });
    if (traceFds) {
      // Debugging aid for leak findings (FUZZ_TRACE_FDS=1 with --replay): what each call left open.
      const now = snapshot();
      if (now !== null) {
        const d = diffSnapshots(traced, now);
        if (d.length > 0) emit({ t: 'trace', i, detail: d.join('; ') });
        traced = now;
      }
    }
  }

  // ---- the end: tables, close everything, leaks ----
  current = -1;
  currentName = 'end';
  currentDesc = 'end of the child: final checks';
  probeAll(true);
  for (const v of cloexecViolations()) {
    counts.cloexec++;
    finding('cloexec', { detail: `${v} has no FD_CLOEXEC (at the end)` });
  }
  currentDesc = 'end of the child: closing everything';
  for (const e of st.closeAll()) {
    const v = classify(e);
    if (!v.documented) {
      counts.undocumented++;
      finding('undocumented', { cls: v.cls, why: v.why, message: v.message, during: 'close() at the end' });
    }
  }
  const end = snapshot();
  const d = end === null ? ['cannot list /proc/self/fd after closing everything: EMFILE (every fd is still taken)'] : diffSnapshots(baseline, end);
  if (d.length > 0) {
    counts.leaks++;
    finding('leak', { detail: `after closing everything: ${d.join('; ')}` });
  }
  emit({ t: 'done', ...counts, codes: Object.fromEntries(codes) });
  // The harness's own fds and the probe page stay until exit; the process
  // must then end by itself: a run() left pending or a ref'd native handle
  // would keep it alive, and the driver counts that as a hang.
}

main().catch((e: unknown) => {
  // A bug of the harness (the calls' own errors never get here).
  emit({ t: 'harness-error', i: current, message: String(e), stack: (e as Error)?.stack });
  process.exit(3);
});
