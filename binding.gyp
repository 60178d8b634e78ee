{
  "targets": [
    {
      "target_name": "kvm_gmem",
      "sources": [
        "native/addon.cc",
        "native/system.cc",
        "native/vm.cc",
        "native/guest_memfd.cc",
        "native/mmap.cc",
        "native/vcpu.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags": ["-fvisibility=hidden", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
      "cflags_cc": ["-std=c++20", "-fexceptions", "-fvisibility=hidden", "-fvisibility-inlines-hidden"],
      "ldflags": ["-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack"]
    }
  ]
}
