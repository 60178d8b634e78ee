// globalSetup of the test-VM tier: holds one VM with one vCPU open for the
// whole run. Each time the system's VM count (or its count of vCPUs without
// an in-kernel APIC) goes between 0 and 1, KVM flips static keys that patch
// code in __schedule; under QEMU TCG with rapid create/close that patching
// raced and crashed the test VM's kernel ("Oops: int3" in __schedule). With
// one VM always open the counts never return to zero.
import { Kvm } from '../../lib/index.js';

export default function setup(): () => void {
  if (process.env.TESTVM !== '1') return () => {};
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  return () => {
    vcpu.close();
    vm.close();
    kvm.close();
  };
}
