// A worker thread of the fuzz child (hazard 'workers'). The child's
// workerOp() starts it with a plan and terminates it at a random moment; the
// child's checks then look for a dead process (the driver sees that), leaked
// fds or mappings (the addon's environment cleanup must release what this
// thread left open) and exceptions that escaped. Modes:
//   slice          random calls from ops.ts on objects of its own, replayable
//                  from plan.seed; checked like the child's own calls;
//   failing-loop   one failing native call in a tight loop (terminate()
//                  lands in the middle of building its error);
//   run            a spinning guest in vcpu.run() (terminate() while the
//                  runner thread is in KVM_RUN);
//   run-sync-loop  runSync() with a short deadline, over and over.
// It reports each call on the child's report fd (one line per write, so the
// lines of the two threads do not mix), so a crash names the worker's call.
import { writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { Guest, Kvm, raw } from '../../lib/index.js';
import { classify, probeVm } from './checks.js';
import { allHazards, type WorkerPlan } from './hazards.js';
import { Ctx, nextCall, show, State, THREAD_SCRIPT } from './ops.js';
import { Rng } from './prng.js';

interface ThreadData {
  plan: WorkerPlan;
  outFd: number;
  files: { fd: number; size: number }[];
  probeAddr: string;
}

const { plan, outFd, files, probeAddr } = workerData as ThreadData;

function emit(o: Record<string, unknown>): void {
  const line = Buffer.from(JSON.stringify({ ...o, thread: plan.seed }, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}n` : v)) + '\n');
  for (let off = 0; off < line.length;) {
    try {
      // One write per line where the pipe takes it: lines of two threads do not interleave.
      off += writeSync(outFd, line, off);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EAGAIN') throw e;
    }
  }
}

let reported = 0;
function check(where: string, desc: string, e: unknown): void {
  const v = classify(e);
  // A tight loop reports its first few findings, not millions.
  if (!v.documented && reported++ < 5)
    emit({ t: 'finding', kind: 'undocumented', where: `worker ${plan.mode}`, desc: `${where}: ${desc}`, cls: v.cls, why: v.why, message: v.message });
}

async function slice(): Promise<void> {
  const rng = new Rng(plan.seed);
  const st = new State(files, BigInt(probeAddr));
  const hz = { ...allHazards(true), workers: false, nofile: false, as: false };
  parentPort?.postMessage('ready');
  for (let i = 0; i < plan.calls; i++) {
    const c = new Ctx(rng, st, hz, { inWorker: true, outFd, threadScript: THREAD_SCRIPT });
    const call = nextCall(c, null);
    emit({ t: 'wcall', i, name: call.name, desc: call.desc });
    try {
      await call.run();
    } catch (e) {
      check(`call ${i}`, call.desc, e);
    }
    await Promise.allSettled(c.pending);
    for (const o of c.observed) check(`call ${i} (${o.label})`, call.desc, o.error);
    for (const vm of c.touched) {
      for (const m of probeVm(vm, { probeAddr: BigInt(probeAddr), usedIds: st.usedIds }, false)) {
        emit({ t: 'finding', kind: 'divergence', where: `worker ${plan.mode}`, desc: `call ${i}: ${call.desc}`, detail: m });
      }
    }
  }
  if (!plan.leaveOpen) st.closeAll();
  else (globalThis as { leftOpen?: unknown }).leftOpen = st;
}

function failingLoop(): void {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const rawVm = raw.createVm(kvm, 0);
  const gmem = vm.capabilities().guestMemfd ? vm.createGuestMemfd({ size: 0x10000 }) : null;
  const calls: [string, () => unknown][] = [
    [
      'raw.setUserMemoryRegion2(unaligned gpa) -> EINVAL',
      () => raw.setUserMemoryRegion2(rawVm, { slot: 0, flags: 0, guestPhysAddr: 100, memorySize: 4096, userspaceAddr: 0, guestMemfdOffset: 0, guestMemfd: 0 }),
    ],
    ["Kvm.open('/nonexistent') -> ENOENT", () => Kvm.open('/nonexistent/kvm')],
    ['raw.createGuestMemfd(size 0) -> EINVAL', () => raw.createGuestMemfd(vm, { size: 0 })],
    ['vm.createVcpu(0) again -> EEXIST', () => vm.createVcpu(0)],
    ['raw.fallocate(bad mode) -> EOPNOTSUPP', () => raw.fallocate(gmem ?? vm, 0x40, 0, 4096)],
    ['raw.enableCap(unknown cap) -> EINVAL', () => raw.enableCap(rawVm, 999999)],
  ];
  const [desc, f] = calls[plan.variant % calls.length] as [string, () => unknown];
  emit({ t: 'wcall', i: 0, name: 'failing-loop', desc: `${desc}, in a tight loop until terminated` });
  parentPort?.postMessage('ready');
  for (;;) {
    try {
      f();
    } catch (e) {
      check('failing loop', desc, e);
    }
  }
}

async function runGuest(loopSync: boolean): Promise<void> {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const g = Guest.longMode(vm, { code: (a) => a.label('spin').jmp('spin') });
  const rng = new Rng(plan.seed);
  emit({
    t: 'wcall',
    i: 0,
    name: loopSync ? 'run-sync-loop' : 'run',
    desc: loopSync ? 'a spinning guest in runSync({timeoutMs: 1..20}), over and over' : 'a spinning guest in vcpu.run() (no deadline: terminate() ends it)',
  });
  parentPort?.postMessage('ready');
  if (loopSync) {
    for (;;) {
      try {
        g.vcpu.runSync({ timeoutMs: rng.range(1, 20) });
      } catch (e) {
        check('runSync loop', show(e), e);
      }
    }
  }
  for (;;) {
    try {
      await (rng.chance(0.5) ? g.vcpu.run() : g.vcpu.run({ timeoutMs: rng.range(1, 50) }));
    } catch (e) {
      check('run loop', 'vcpu.run()', e);
    }
  }
}

switch (plan.mode) {
  case 'slice':
    await slice();
    break;
  case 'failing-loop':
    failingLoop();
    break;
  case 'run':
    await runGuest(false);
    break;
  case 'run-sync-loop':
    await runGuest(true);
    break;
}
