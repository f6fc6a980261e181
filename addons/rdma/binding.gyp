# The native verbs addon. Built only by `npm run build:rdma` (scripts/build-rdma.mjs), never at
# install. libibverbs and librdmacm are NOT linked: the addon dlopens them at first use, so only
# their headers (Debian: libibverbs-dev librdmacm-dev) are needed to build it.
{
  "targets": [
    {
      "target_name": "koala_rdma",
      "sources": ["src/addon.cc", "src/libs.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags": ["-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc": ["-fvisibility=hidden", "-fvisibility-inlines-hidden", "-std=c++17"],
      "libraries": ["-ldl"],
      # -z nodelete: Node dlcloses an addon when the last environment that loaded it ends (a
      # worker thread, while the main thread never loaded it); the close callbacks of libuv
      # handles closed by the cleanup hook run after that and must still find their code.
      "ldflags": ["-Wl,--exclude-libs,ALL", "-Wl,--version-script=<(module_root_dir)/exports.map", "-Wl,-z,nodelete"]
    },
    {
      # The software RNIC for tests (srnic/*.c, header comment of srnic/srnic.c): stands in for
      # libibverbs and librdmacm through KOALA_VERBS_LIB / KOALA_RDMACM_LIB. Not part of the addon.
      "target_name": "srnic",
      "type": "shared_library",
      "product_name": "koala_srnic",
      "sources": ["srnic/srnic.c", "srnic/nic.c", "srnic/cm.c"],
      "libraries": ["-lpthread"],
      # Never unloaded (dlclose is a no-op): its service thread runs for the life of the process.
      "ldflags": ["-Wl,-z,nodelete"],
      "cflags": ["-fvisibility=hidden", "-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
    }
  ]
}
